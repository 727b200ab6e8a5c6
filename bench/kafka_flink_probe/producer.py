"""Probe producer: JSON readings to chosen partitions, Kafka CreateTime = event time.

Each message value carries prod_ms (wall clock at produce) so end-to-end latency can be measured.
--partitions limits which partitions get data (the others stay idle);
--heartbeat-s sends {"heartbeat": true} to EVERY partition of the topic that often, with
CreateTime = current event time (the workaround for idle partitions holding the watermark).
--event-offset-s shifts event time relative to wall clock (negative = the past).
"""
from __future__ import annotations

import argparse
import json
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--topic", required=True)
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--partitions", default=None, help="comma list; default all")
    ap.add_argument("--rate", type=float, default=10.0, help="messages/s (0 = as fast as possible)")
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1, help="readings per message (array if > 1)")
    ap.add_argument("--heartbeat-s", type=float, default=0.0)
    ap.add_argument("--event-offset-s", type=float, default=0.0)
    ap.add_argument("--tail-s", type=float, default=0.0, help="keep heartbeating this long after the data")
    ap.add_argument("--prefix", default="e")
    a = ap.parse_args()

    md = AdminClient({"bootstrap.servers": a.bootstrap}).list_topics(a.topic, timeout=10)
    all_parts = sorted(md.topics[a.topic].partitions)
    parts = [int(x) for x in a.partitions.split(",")] if a.partitions else all_parts
    p = Producer({"bootstrap.servers": a.bootstrap, "linger.ms": 5 if a.rate else 50,
                  "compression.type": "lz4", "message.max.bytes": 2_000_000, "enable.idempotence": True})
    t0 = time.time()
    last_hb = 0.0
    sensors = ["compressor_current", "suction_pressure", "discharge_pressure", "vibration", "temperature"]
    pad = "x" * 20

    def heartbeat():
        ev = int((time.time() + a.event_offset_s) * 1000)
        for q in all_parts:
            p.produce(a.topic, key=b"hb", value=json.dumps({"heartbeat": True, "ts": ev}).encode(),
                      partition=q, timestamp=ev)

    for i in range(a.count):
        if a.rate:
            target = t0 + i / a.rate
            while True:
                d = target - time.time()
                if d <= 0:
                    break
                time.sleep(min(d, 0.05))
                if a.heartbeat_s and time.time() - last_hb >= a.heartbeat_s:
                    heartbeat(); last_hb = time.time()
        if a.heartbeat_s and time.time() - last_hb >= a.heartbeat_s:
            heartbeat(); last_hb = time.time()
        wall = int(time.time() * 1000)
        ev = wall + int(a.event_offset_s * 1000)
        dev = f"dev-{i % a.devices:04d}"
        readings = [{"event_id": f"{a.prefix}-{i}-{j}", "device_id": dev if a.batch == 1 else f"dev-{(i * a.batch + j) % a.devices:04d}",
                     "sensor_type": sensors[j % 5], "value": 1.0 + j, "unit": None, "ts": ev, "seq": i,
                     "prod_ms": wall, "pad": pad} for j in range(a.batch)]
        body = readings[0] if a.batch == 1 else readings
        part = parts[i % len(parts)]
        p.produce(a.topic, key=dev.encode(), value=json.dumps(body).encode(), partition=part, timestamp=ev)
        p.poll(0)
    end = time.time() + a.tail_s
    while a.heartbeat_s and time.time() < end:
        if time.time() - last_hb >= a.heartbeat_s:
            heartbeat(); last_hb = time.time()
        p.poll(0.1)
    p.flush(30)
    print(json.dumps({"messages": a.count, "readings": a.count * a.batch, "partitions": parts,
                      "wall_s": round(time.time() - t0, 2)}))


if __name__ == "__main__":
    main()
