"""Decode throughput: the per-reading path vs the fast path (msgspec + column checks).

Input: pre-encoded, simulator-like messages (simulation.wire shapes: event_id
"<device>-<sensor>-<t_ms>", values rounded to 4 decimals, the canonical unit left out for every
other device, ts as epoch-ms numbers for most devices and ISO-8601 text for some, seq), as
  gateway   gateway batches of --batch_readings readings, --gateway_messages messages per decode call
  single    single-reading messages, --single_messages per decode call (the pipeline's batch bound)
  dirty     gateway batches where every 10th message holds one bad reading (unknown unit), which
            sends that message to the per-reading path
Runner: none, decode_messages() in this process (what the Decode DoFn calls once per bundle batch);
best of --repeats timed calls. Both paths must give the same rows and dead letters (checked).

  python -m bench.bench_decode
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import time

import orjson

from bench.machine import describe, machine
from schemas.sensors import SENSOR_TYPES, SENSORS
from transforms.decode import KafkaMessage, decode_messages

T0_MS = 1795000000000
NOW = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)


def simulated_readings(n: int, devices: int = 200) -> list[dict]:
    out = []
    for i in range(n):
        d, s, step = i % devices, (i // devices) % len(SENSOR_TYPES), i // (devices * len(SENSOR_TYPES))
        sensor = SENSOR_TYPES[s]
        t_ms = T0_MS + step * 10_000 + d * 7
        r = {"event_id": f"dev-{d:05d}-{s}-{t_ms}", "device_id": f"dev-{d:05d}", "sensor_type": sensor,
             "value": round(20 + (i * 0.6180339887) % 30, 4), "unit": SENSORS[sensor].canonical_unit,
             "ts": t_ms, "seq": step * len(SENSOR_TYPES) + s}
        if d % 7 == 3:
            r["ts"] = dt.datetime.fromtimestamp(t_ms / 1000, dt.timezone(dt.timedelta(hours=1))).isoformat(
                timespec="milliseconds")
        if d % 2:
            del r["unit"]
        out.append(r)
    return out


def messages(bodies: list[bytes]) -> list[KafkaMessage]:
    return [KafkaMessage("sensor.readings", i % 4, i, T0_MS + i, b"k", b) for i, b in enumerate(bodies)]


def scenarios(args) -> dict[str, list[KafkaMessage]]:
    per = args.batch_readings
    gateway = simulated_readings(per * args.gateway_messages)
    batches = [gateway[k:k + per] for k in range(0, len(gateway), per)]
    dirty = [b if k % 10 else b[:1] + [dict(b[1], unit="furlongs")] + b[2:] for k, b in enumerate(batches)]
    return {
        "gateway": messages([orjson.dumps(b) for b in batches]),
        "single": messages([orjson.dumps(r) for r in simulated_readings(args.single_messages)]),
        "dirty": messages([orjson.dumps(b) for b in dirty]),
    }


def best_seconds(msgs: list[KafkaMessage], fast: bool, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        decode_messages(msgs, NOW, fast=fast)
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch_readings", type=int, default=500)
    p.add_argument("--gateway_messages", type=int, default=20)
    p.add_argument("--single_messages", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    m = machine()
    print(f"decode_messages, best of {args.repeats}, on {describe(m)}")
    print(f"{'input':8} {'messages':>8} {'readings':>8} {'per-reading/s':>14} {'fast/s':>12} {'speed-up':>8} "
          f"{'left to per-reading':>20}")
    result = {"bench": "decode", "machine": m, "repeats": args.repeats}
    for name, msgs in scenarios(args).items():
        fast, slow = decode_messages(msgs, NOW), decode_messages(msgs, NOW, fast=False)
        assert fast.readings.equals(slow.readings) and fast.deadletters.equals(slow.deadletters), name
        n = fast.readings.num_rows + fast.deadletters.num_rows
        t_slow, t_fast = best_seconds(msgs, False, args.repeats), best_seconds(msgs, True, args.repeats)
        print(f"{name:8} {len(msgs):8d} {n:8d} {n / t_slow:14,.0f} {n / t_fast:12,.0f} {t_slow / t_fast:7.1f}x "
              f"{fast.per_reading_messages:20d}")
        result[name] = {"messages": len(msgs), "readings": n, "per_reading_readings_per_s": round(n / t_slow),
                        "fast_readings_per_s": round(n / t_fast), "speedup": round(t_slow / t_fast, 2),
                        "us_per_reading_per_reading_path": round(t_slow / n * 1e6, 3),
                        "us_per_reading_fast": round(t_fast / n * 1e6, 3),
                        "messages_left_to_per_reading_path": fast.per_reading_messages}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
