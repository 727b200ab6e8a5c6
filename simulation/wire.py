"""Contract 1 on the wire: JSON messages for Kafka, and the malformed ones the fleet also sends."""
from __future__ import annotations

import orjson
import pyarrow as pa

MAX_BATCH = 1000
_NON_FINITE_SENTINEL = 987654.125


def reading_dicts(table: pa.Table) -> list[dict]:
    """Readings as JSON-ready dicts: epoch-ms `ts` becomes a number, a canonical unit is left
    out for every other device (the contract's default)."""
    rows = table.select(["event_id", "device_id", "sensor_type", "value", "unit", "ts", "seq"]).to_pylist()
    omit = table.column("_omit_unit").to_pylist() if "_omit_unit" in table.column_names else None
    for i, r in enumerate(rows):
        if r["ts"].isdigit():
            r["ts"] = int(r["ts"])
        if omit is not None and omit[i]:
            del r["unit"]
    return rows


def encode(readings: list[dict] | dict) -> bytes:
    return orjson.dumps(readings)


def wire_fault_message(fault: str, n: int, template: dict) -> tuple[bytes, list[str], list[str]]:
    """One message carrying a wire fault: (body, ids of rejected readings, ids of good ones).

    Faults that affect one reading are embedded in a batch with two good neighbours, which
    must land; the whole-message faults carry their own readings, all of which are rejected.
    """
    tag = f"wf-{fault}-{n}-{template['ts']}"      # unique per message, like any reading's id

    def good(k: int) -> dict:
        return dict(template, event_id=f"{tag}-ok{k}")
    bad = dict(template, event_id=f"{tag}-bad")
    if fault == "bad_json":
        body = encode([bad, dict(bad, event_id=bad["event_id"] + "2")])
        return body[: len(body) // 2], [bad["event_id"], bad["event_id"] + "2"], []
    if fault == "oversized_batch":
        readings = [dict(bad, event_id=f"{bad['event_id']}{i}") for i in range(MAX_BATCH + 1)]
        return encode(readings), [r["event_id"] for r in readings], []
    if fault == "oversized_message":
        readings = [dict(bad, event_id=f"{bad['event_id']}{i}", note="x" * 1200) for i in range(900)]
        return encode(readings), [r["event_id"] for r in readings], []
    if fault == "missing_field":
        del bad["value"]
    elif fault == "wrong_type":
        bad["value"] = str(bad["value"])
    elif fault == "unknown_sensor_type":
        bad["sensor_type"] = "oil_level"
    elif fault == "invalid_device_id":
        bad["device_id"] = "../../etc/passwd"
    elif fault == "oversized_reading":
        bad["note"] = "x" * 5000
    elif fault == "non_finite":   # JSON has no NaN/inf; a device can still send an overflowing literal
        bad["value"] = _NON_FINITE_SENTINEL
    else:
        raise ValueError(f"unknown wire fault {fault}")
    batch = [good(0), bad, good(1)]
    body = encode(batch)
    if fault == "non_finite":
        body = body.replace(orjson.dumps(_NON_FINITE_SENTINEL), b"1e999", 1)
    return body, [bad["event_id"]], [good(k)["event_id"] for k in range(2)]
