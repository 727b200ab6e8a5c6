"""Data contracts (DESIGN sections 2 and 3) as pyarrow schemas: the single source of truth.

The TFDV schema files (``schemas/tfdv/*.pbtxt``, written by ``python -m schemas.generate_tfdv``) are
derived from these definitions.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

UTC_TS = pa.timestamp("us", tz="UTC")


def _req(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=False)


def _opt(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=True)


# Contract 1, one reading on the wire (Kafka sensor.readings), as decoded. ``ts`` keeps the
# form it was sent in: ISO-8601 text, or epoch milliseconds rendered as decimal digits.
READING_FIELDS = [
    _req("event_id", pa.string()),
    _req("device_id", pa.string()),
    _req("sensor_type", pa.string()),
    _req("value", pa.float64()),
    _opt("unit", pa.string()),
    _req("ts", pa.string()),
    _opt("seq", pa.int64()),
]
READING = pa.schema(READING_FIELDS)

# Kafka coordinates are null for rows that did not come through Kafka (simulator backfill).
KAFKA_FIELDS = [
    _opt("kafka_topic", pa.string()),
    _opt("kafka_partition", pa.int32()),
    _opt("kafka_offset", pa.int64()),
]

RAW_SENSOR_READINGS = pa.schema(
    READING_FIELDS
    + [_req("timestamp_ingested", UTC_TS)]
    + KAFKA_FIELDS
    + [_req("ingest_date", pa.date32())]
)

# The cold tier keeps Contract 1 as landed; its partition columns live in the directory names.
ARCHIVE_RAW_SENSOR_READINGS = RAW_SENSOR_READINGS

DEADLETTER = pa.schema([
    _req("reason", pa.string()),            # machine-readable, see transforms.decode.Reason
    _opt("detail", pa.string()),            # human-readable explanation
    _req("payload", pa.binary()),           # raw bytes, or a bounded prefix of them
    _req("payload_size", pa.int64()),       # size of the whole original payload
    _opt("batch_index", pa.int32()),        # position inside a gateway batch, if any
    _opt("event_id", pa.string()),
    _opt("device_id", pa.string()),
    _req("source", pa.string()),            # pipeline that rejected it
    *KAFKA_FIELDS,
    _opt("timestamp_ingested", UTC_TS),
    _req("deadlettered_at", UTC_TS),
])

QUALITY_LEVELS = ("GOOD", "SUSPECT", "BAD")

CLEAN_SENSOR_READINGS = pa.schema([
    _req("event_id", pa.string()),
    _req("device_id", pa.string()),
    _req("sensor_type", pa.string()),
    _req("value", pa.float64()),
    _req("unit", pa.string()),
    _req("timestamp_utc", UTC_TS),
    _req("timestamp_ingested", UTC_TS),
    _req("quality", pa.string()),
    _req("quality_reasons", pa.list_(pa.string())),
    _req("date", pa.date32()),
])

QUARANTINE = pa.schema(
    READING_FIELDS
    + [_req("timestamp_ingested", UTC_TS)]
    + KAFKA_FIELDS
    + [
        # unknown_device | inactive_device | unknown_sensor_type | unknown_unit | invalid_value |
        # unparseable_ts (transforms.cleansing.QUARANTINE_REASONS)
        _req("reason", pa.string()),
        _req("source_version", pa.int64()),  # landing Delta version the row came from
        _req("quarantined_at", UTC_TS),
    ]
)

DEVICES = pa.schema([
    _req("device_id", pa.string()),
    _req("site_id", pa.string()),
    _req("model", pa.string()),
    _req("timezone", pa.string()),          # IANA name
    _req("rated_current_a", pa.float64()),
    _req("commissioned_at", UTC_TS),
    _req("active", pa.bool_()),
])

# Per-sensor window statistics, named <sensor>_<stat> in the features table. The GOOD_STATS are of
# GOOD readings only; the QUALITY_STATS see every reading, so a reading flagged BAD or SUSPECT (an
# overload beyond the valid range, a stuck sensor) still shows in the window's features.
GOOD_STATS = ("mean", "std", "min", "max", "last", "slope", "count", "missing_ratio")
QUALITY_STATS = ("all_min", "all_max", "bad_count", "suspect_count")
FEATURE_STATS = GOOD_STATS + QUALITY_STATS
CROSS_FEATURES = ("pressure_ratio", "current_per_lift", "superheat_proxy")


def feature_columns() -> list[str]:
    from schemas.sensors import SENSOR_TYPES
    return [f"{s}_{stat}" for s in SENSOR_TYPES for stat in FEATURE_STATS] + list(CROSS_FEATURES)


FEATURES = pa.schema(
    [
        _req("device_id", pa.string()),
        _req("window_size", pa.string()),   # e.g. "15m", "1h", "1d", "30s"
        _req("window_start", UTC_TS),
        _req("window_end", UTC_TS),
    ]
    + [_opt(c, pa.int64() if c.endswith("_count") else pa.float64()) for c in feature_columns()]
    + [_req("computed_at", UTC_TS), _req("date", pa.date32())]
)

SCORES = pa.schema([
    _req("device_id", pa.string()),
    _req("window_size", pa.string()),
    _req("window_start", UTC_TS),
    _req("window_end", UTC_TS),
    _req("model", pa.string()),             # isolation_forest | autoencoder | statistical | ensemble
    _req("model_version", pa.string()),
    _req("score", pa.float64()),
    _req("threshold", pa.float64()),
    _req("is_anomaly", pa.bool_()),
    _req("top_features", pa.list_(pa.string())),   # of anomalous windows: largest contributions first
    _req("scored_at", UTC_TS),
    _req("date", pa.date32()),              # UTC date of window_start (partition)
])

ALERT_SEVERITIES = ("CRITICAL", "HIGH", "WARNING")
# the acute rules are registered once, as classes of the engine (no import cycle: it imports no schema)
from core.acute_rules import RULE_NAMES as ACUTE_RULES  # noqa: E402

ALERTS = pa.schema([
    _req("alert_id", pa.string()),
    _req("device_id", pa.string()),
    _req("rule", pa.string()),              # an acute rule, or MODEL_<name> for model alerts
    _req("severity", pa.string()),
    _req("event_time", UTC_TS),
    _req("detected_at", UTC_TS),
    _req("value", pa.float64()),
    _req("threshold", pa.float64()),
    _req("context", pa.string()),           # JSON: window context of the rule or model
    _opt("event_id", pa.string()),          # the triggering reading, for acute alerts
])


@dataclass(frozen=True)
class Table:
    """A table of the lake: where it lives under ``--lake``, its schema and layout."""

    name: str
    path: str
    schema: pa.Schema
    partition_by: tuple[str, ...] = ()
    format: str = "delta"

    @property
    def tfdv_schema_file(self) -> str:
        from pathlib import Path
        return str(Path(__file__).parent / "tfdv" / f"{self.name}.pbtxt")


TABLES: dict[str, Table] = {t.name: t for t in [
    Table("raw_sensor_readings", "landing/raw_sensor_readings", RAW_SENSOR_READINGS, ("ingest_date",)),
    Table("deadletter", "deadletter", DEADLETTER),
    Table("clean_sensor_readings", "clean/sensor_readings", CLEAN_SENSOR_READINGS, ("date",)),
    Table("quarantine", "quarantine", QUARANTINE),
    Table("features", "features", FEATURES, ("window_size", "date")),
    Table("scores", "scores", SCORES, ("date",)),
    Table("alerts", "alerts", ALERTS),
    Table("devices", "registry/devices", DEVICES),
    Table("archive_raw_sensor_readings", "archive/raw_sensor_readings", ARCHIVE_RAW_SENSOR_READINGS,
          ("date", "device_id"), format="parquet"),
    Table("reading", "", READING, format="kafka"),
]}
