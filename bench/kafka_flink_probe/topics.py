"""create|delete|offsets <topic> [partitions] [group]: probe topic admin via confluent_kafka."""
import sys

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

BOOT = "127.0.0.1:9092"
cmd, topic = sys.argv[1], sys.argv[2]
admin = AdminClient({"bootstrap.servers": BOOT})
if cmd == "create":
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    for t, f in admin.create_topics([NewTopic(topic, n, 1)]).items():
        f.result(); print("created", t, n)
elif cmd == "delete":
    for t, f in admin.delete_topics([topic]).items():
        f.result(); print("deleted", t)
elif cmd == "offsets":   # end offsets and (if a group is given) committed offsets per partition
    group = sys.argv[3] if len(sys.argv) > 3 else "kprobe-none"
    c = Consumer({"bootstrap.servers": BOOT, "group.id": group, "enable.auto.commit": False})
    parts = sorted(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    tps = [TopicPartition(topic, q) for q in parts]
    committed = {tp.partition: tp.offset for tp in c.committed(tps, timeout=10)}
    for q in parts:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, q), timeout=10)
        print(f"partition {q}: end={hi} committed[{group}]={committed[q]}")
    c.close()
