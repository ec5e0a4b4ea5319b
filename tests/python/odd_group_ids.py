"""kafka-python commits offsets for group ids holding a NUL, a newline and other odd characters; after a kill -9
and a restart of the broker (done by the Rust test between the two phases) every commit is still there.

Usage: odd_group_ids.py HOST:PORT commit|check. Exits non-zero with the reason on any mismatch.
"""
import sys

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic

bootstrap, phase = sys.argv[1], sys.argv[2]
GROUPS = {"bar\x00group\nwith-odd-bytes": 5, "plain": 7, "\x00": 11, "tab\tand \u00e9\u4e2d": 13}
tp = TopicPartition("oddgroups", 0)

if phase == "commit":
    KafkaAdminClient(bootstrap_servers=bootstrap).create_topics([NewTopic("oddgroups", 1, 1)])
    for group, offset in GROUPS.items():
        c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        c.assign([tp])
        from kafka.structs import OffsetAndMetadata
        c.commit({tp: OffsetAndMetadata(offset, None, -1)})
        got = c.committed(tp)
        c.close()
        if got != offset:
            sys.exit(f"{group!r}: committed {got}, wanted {offset}")
    print("odd group ids committed")
else:
    for group, offset in GROUPS.items():
        c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        got = c.committed(tp)
        c.close()
        if got != offset:
            sys.exit(f"{group!r}: after the restart committed {got}, wanted {offset}")
    print("odd group ids survive kill -9")
