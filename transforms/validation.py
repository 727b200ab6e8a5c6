"""Validates Arrow batches against a table's TFDV contract.

``validate(table, batches, baseline)`` computes TFDV statistics over the batches and checks them
against ``schemas/tfdv/<table>.pbtxt``. Anomalies are split in three kinds:

* hard breaks: the shape of the contract is broken (a column missing or unexpected, a wrong
  type, a required value absent). Pipelines fail the run before committing.
* domain: values outside the contract's domains (unknown sensor type or unit, a value outside
  its sensor's range, NaN/inf). Reported; expected in raw data, which cleansing flags.
* drift: Jensen-Shannon divergence of a numeric feature against a stored baseline statistics
  file above the schema's threshold. Reported.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import tensorflow_data_validation as tfdv  # noqa: E402
from tensorflow_data_validation.statistics import stats_impl, stats_options  # noqa: E402
from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2  # noqa: E402

from schemas import contracts  # noqa: E402
from schemas.generate_tfdv import QUALITY_FLAGGED_TABLES, READING_TABLES, derived_value_feature  # noqa: E402
from schemas.sensors import SENSORS  # noqa: E402

_Reason = anomalies_pb2.AnomalyInfo.Type
HARD_BREAK_TYPES = frozenset({
    _Reason.SCHEMA_MISSING_COLUMN, _Reason.SCHEMA_NEW_COLUMN, _Reason.UNEXPECTED_DATA_TYPE,
    _Reason.FEATURE_TYPE_LOW_FRACTION_PRESENT, _Reason.FEATURE_TYPE_LOW_NUMBER_PRESENT,
    _Reason.FEATURE_TYPE_NOT_PRESENT, _Reason.FEATURE_TYPE_LOW_NUMBER_VALUES,
    _Reason.FEATURE_TYPE_HIGH_NUMBER_VALUES, _Reason.FEATURE_MISSING_NAME,
    _Reason.FEATURE_MISSING_TYPE,
})
DRIFT_TYPES = frozenset({_Reason.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH,
                         _Reason.COMPARATOR_L_INFTY_HIGH})


@dataclass(frozen=True)
class Anomaly:
    feature: str
    kind: str            # "hard" | "domain" | "drift"
    types: tuple[str, ...]
    description: str


@dataclass
class ValidationReport:
    table: str
    num_rows: int
    anomalies: list[Anomaly] = field(default_factory=list)
    statistics: statistics_pb2.DatasetFeatureStatisticsList | None = None

    def of_kind(self, kind: str) -> list[Anomaly]:
        return [a for a in self.anomalies if a.kind == kind]

    @property
    def hard_breaks(self) -> list[Anomaly]:
        return self.of_kind("hard")

    @property
    def domain_violations(self) -> list[Anomaly]:
        return self.of_kind("domain")

    @property
    def drift(self) -> list[Anomaly]:
        return self.of_kind("drift")

    @property
    def ok(self) -> bool:
        return not self.anomalies

    def summary(self) -> str:
        if self.ok:
            return f"{self.table}: {self.num_rows} rows, contract OK"
        lines = [f"{self.table}: {self.num_rows} rows, {len(self.anomalies)} anomalies"]
        lines += [f"  [{a.kind}] {a.feature}: {a.description}" for a in self.anomalies]
        return "\n".join(lines)


class ContractViolation(RuntimeError):
    """Raised when data about to be committed breaks its table's contract."""

    def __init__(self, report: ValidationReport):
        super().__init__(report.summary())
        self.report = report


def load_schema(table: str):
    return tfdv.load_schema_text(contracts.TABLES[table].tfdv_schema_file)


def _as_tfdv_column(array: pa.Array) -> pa.Array:
    """TFDV wants every column as a list array; timestamps, dates and booleans as integers."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    t = array.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return array
    if pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_boolean(t):
        array = pc.cast(pc.cast(array, pa.int64() if not pa.types.is_date(t) else pa.int32()), pa.int64())
    elif pa.types.is_dictionary(t):
        array = array.dictionary_decode()
    # null entries become null lists (a null offset), and take no room in the values
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    ends = np.concatenate([[0], np.cumsum(valid)]).astype(np.int32)
    offsets = pa.array(ends, mask=np.append(~valid, False))
    return pa.ListArray.from_arrays(offsets, array.drop_null())


def _with_derived_values(table_name: str, batch: pa.Table) -> pa.Table:
    """Adds ``value__<sensor>``: the value in its sensor's canonical unit, null elsewhere."""
    names = batch.column_names
    if table_name not in READING_TABLES or not {"sensor_type", "value"} <= set(names) \
            or not pa.types.is_floating(batch.schema.field("value").type):
        return batch
    sensor = batch.column("sensor_type").to_numpy().astype(object)
    unit = (batch.column("unit").to_numpy().astype(object)
            if "unit" in names else np.full(len(sensor), None, dtype=object))
    value = batch.column("value").to_numpy().astype(np.float64)
    if table_name in QUALITY_FLAGGED_TABLES and "quality" in names:
        # rows cleansing flagged BAD (e.g. out of range) are meant to be there: keep them out of the
        # per-sensor domain and drift features, which describe the usable readings
        sensor = np.where(batch.column("quality").to_numpy().astype(object) == "BAD",
                          None, sensor)
    for sensor_type, spec in SENSORS.items():
        out = np.zeros(len(value))
        converted = np.zeros(len(value), dtype=bool)
        is_sensor = sensor == sensor_type
        for u, (scale, offset) in spec.conversions.items():
            m = is_sensor & ((unit == u) | ((unit == None) & (u == spec.canonical_unit)))  # noqa: E711
            out[m] = value[m] * scale + offset
            converted |= m
        # readings of an unknown unit stay null here; the unit's domain reports them
        batch = batch.append_column(derived_value_feature(sensor_type), pa.array(out, mask=~converted))
    return batch


def _concat(batches: Iterable[pa.RecordBatch | pa.Table]) -> pa.Table:
    return pa.concat_tables([b if isinstance(b, pa.Table) else pa.Table.from_batches([b]) for b in batches])


def to_tfdv_batch(table: str, data: pa.Table | pa.RecordBatch) -> pa.RecordBatch:
    """The batch as TFDV consumes it: derived per-sensor values added, every column a list."""
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    data = _with_derived_values(table, data)
    return pa.RecordBatch.from_arrays([_as_tfdv_column(c) for c in data.columns], names=data.column_names)


def statistics(table: str, batches: Iterable[pa.RecordBatch | pa.Table]) -> statistics_pb2.DatasetFeatureStatisticsList:
    """TFDV statistics of the batches (in memory), with the derived per-sensor value features."""
    return stats_impl.generate_statistics_in_memory(to_tfdv_batch(table, _concat(batches)), stats_options.StatsOptions())


def _classify(types: set[int]) -> str:
    if types & HARD_BREAK_TYPES:
        return "hard"
    if types & DRIFT_TYPES:
        return "drift"
    return "domain"


def check(table: str, stats: statistics_pb2.DatasetFeatureStatisticsList,
          baseline: statistics_pb2.DatasetFeatureStatisticsList | None = None) -> ValidationReport:
    """Checks statistics against the table's TFDV schema (and drift against ``baseline``)."""
    anomalies = tfdv.validate_statistics(stats, load_schema(table), previous_statistics=baseline)
    dataset = stats.datasets[0]
    report = ValidationReport(table, dataset.num_examples, statistics=stats)
    for feature, info in sorted(anomalies.anomaly_info.items()):
        types = {r.type for r in info.reason}
        report.anomalies.append(Anomaly(
            feature=feature, kind=_classify(types),
            types=tuple(sorted(_Reason.Name(t) for t in types)),
            description="; ".join(r.description for r in info.reason)))
    # statistics cannot tell an absent optional column from an all-null one; its absence can
    present = {".".join(f.path.step) for f in dataset.features}
    reported = {a.feature for a in report.anomalies}
    report.anomalies += [Anomaly(f.name, "hard", ("SCHEMA_MISSING_COLUMN",), "Column dropped")
                         for f in contracts.TABLES[table].schema
                         if f.name not in present and f.name not in reported and dataset.num_examples]
    return report


def validate(table: str, batches: Iterable[pa.RecordBatch | pa.Table],
             baseline: statistics_pb2.DatasetFeatureStatisticsList | None = None) -> ValidationReport:
    """Validates in-memory Arrow data against the table's contract."""
    return check(table, statistics(table, batches), baseline)


class ValidateContract(beam.PTransform):
    """PCollection of Arrow tables -> one ValidationReport, with TFDV's Beam statistics."""

    def __init__(self, table: str, baseline=None, sample_rate: float | None = None):
        super().__init__()
        self._table, self._baseline, self._sample_rate = table, baseline, sample_rate

    def expand(self, tables):
        table, baseline = self._table, self._baseline
        # sketch-based top-k/uniques, as the in-memory path uses: the exact generator emits one Beam
        # element per distinct string (millions for event_id) and dominated a pipeline's run time
        options = stats_options.StatsOptions(sample_rate=self._sample_rate, use_sketch_based_topk_uniques=True)
        return (tables
                | "ToTfdv" >> beam.Map(lambda t: to_tfdv_batch(table, t))
                | "Statistics" >> tfdv.GenerateStatistics(options)
                | "Check" >> beam.Map(lambda stats: _log_report(check(table, stats, baseline))))


def _log_report(report: ValidationReport) -> ValidationReport:
    level = logging.ERROR if report.hard_breaks else logging.WARNING if report.anomalies else logging.INFO
    logging.getLogger(__name__).log(level, "contract check: %s", report.summary())
    return report


def save_baseline(stats: statistics_pb2.DatasetFeatureStatisticsList, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(stats.SerializeToString())


def load_baseline(path: str | Path) -> statistics_pb2.DatasetFeatureStatisticsList | None:
    if not Path(path).exists():
        return None
    stats = statistics_pb2.DatasetFeatureStatisticsList()
    stats.ParseFromString(Path(path).read_bytes())
    return stats
