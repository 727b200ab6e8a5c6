"""Beam row types (schema'd NamedTuples) derived from the pyarrow contracts.

Beam's own arrow converter does not map timestamps or dates, so this small mapping covers the
types the contracts use. Row types are registered with Beam's RowCoder.
"""
from __future__ import annotations

import datetime
import typing

import apache_beam as beam
import pyarrow as pa
from apache_beam.utils.timestamp import Timestamp

from schemas import contracts


def _python_type(t: pa.DataType) -> type:
    if pa.types.is_string(t):
        return str
    if pa.types.is_binary(t):
        return bytes
    if pa.types.is_floating(t):
        return float
    if pa.types.is_integer(t):
        return int
    if pa.types.is_boolean(t):
        return bool
    if pa.types.is_timestamp(t):
        return Timestamp
    if pa.types.is_date(t):
        return datetime.date
    if pa.types.is_list(t):
        return typing.Sequence[_python_type(t.value_type)]
    raise TypeError(f"no Beam row mapping for arrow type {t}")


def row_type(name: str, schema: pa.Schema) -> type:
    """A NamedTuple whose fields follow ``schema`` (nullable fields become Optional)."""
    fields = []
    for f in schema:
        py = _python_type(f.type)
        fields.append((f.name, typing.Optional[py] if f.nullable else py))
    cls = typing.NamedTuple(name, fields)
    beam.coders.registry.register_coder(cls, beam.coders.RowCoder)
    return cls


Reading = row_type("Reading", contracts.READING)
RawSensorReading = row_type("RawSensorReading", contracts.RAW_SENSOR_READINGS)
DeadLetter = row_type("DeadLetter", contracts.DEADLETTER)
CleanSensorReading = row_type("CleanSensorReading", contracts.CLEAN_SENSOR_READINGS)
Quarantined = row_type("Quarantined", contracts.QUARANTINE)
Device = row_type("Device", contracts.DEVICES)
Alert = row_type("Alert", contracts.ALERTS)
Score = row_type("Score", contracts.SCORES)
FeatureRow = row_type("FeatureRow", contracts.FEATURES)
