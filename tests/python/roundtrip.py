"""kafka-python against millrace: produce with every codec it supports, consume with assign(), admin calls.

Usage: roundtrip.py HOST:PORT. Exits non-zero (with the reason) on any mismatch.
"""
import sys

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic
from kafka.errors import TopicAlreadyExistsError

bootstrap = sys.argv[1]
admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="e2e-admin")

codecs = [None, "gzip", "snappy", "lz4", "zstd"]
topics = ["py-" + (c or "none") for c in codecs]
admin.create_topics([NewTopic(t, 2, 1, topic_configs={"retention.ms": "86400000"}) for t in topics])
try:
    admin.create_topics([NewTopic(topics[0], 1, 1)])
    sys.exit("creating an existing topic must fail")
except TopicAlreadyExistsError:
    pass

for codec, topic in zip(codecs, topics):
    producer = KafkaProducer(bootstrap_servers=bootstrap, compression_type=codec, acks="all", linger_ms=5)
    sent = []
    for i in range(300):
        key = None if i % 10 == 0 else f"key-{i}".encode()
        value = None if (i % 17 == 1 and key is not None) else (f"{codec}-{i}-" + "v" * (i % 50)).encode()
        headers = [("n", str(i).encode())]
        future = producer.send(topic, key=key, value=value, partition=i % 2, headers=headers)
        sent.append((future, key, value, headers))
    producer.flush()
    sent = [(f.get(timeout=30), k, v, h) for f, k, v, h in sent]
    sent = [(m.partition, m.offset, k, v, h) for m, k, v, h in sent]
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=1500)
    consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
    consumer.seek_to_beginning()
    got = [(m.topic, m.partition, m.offset, m.key, m.value, list(m.headers)) for m in consumer]
    consumer.close()
    want = sorted((topic, p, o, k, v, h) for p, o, k, v, h in sent)
    got = sorted(got)
    if got != want:
        sys.exit(f"{codec}: consumed {len(got)} records, expected {len(want)}; first difference: "
                 f"{next(((g, w) for g, w in zip(got, want) if g != w), None)}")
    end = KafkaConsumer(bootstrap_servers=bootstrap).end_offsets([TopicPartition(topic, 0), TopicPartition(topic, 1)])
    if sum(end.values()) != 300:
        sys.exit(f"{codec}: end offsets {end}")

configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topics[0])])
if "86400000" not in str(configs):
    sys.exit(f"describe_configs did not show retention.ms: {configs}")
admin.create_partitions({topics[0]: NewPartitions(4)})
described = admin.describe_topics([topics[0]])
if len(described[0]["partitions"]) != 4:
    sys.exit(f"expected 4 partitions after create_partitions: {described}")
admin.delete_topics(topics)
left = set(admin.list_topics()) & set(topics)
if left:
    sys.exit(f"topics still listed after delete: {left}")
print("kafka-python round trip ok")
