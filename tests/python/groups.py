"""kafka-python consumer groups against millrace: group consumption with commits, then the admin client's
group calls (list, describe, list offsets, delete offsets, delete groups).

Usage: groups.py HOST:PORT. Exits non-zero with the reason on any mismatch.
"""
import sys

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

bootstrap = sys.argv[1]
KafkaAdminClient(bootstrap_servers=bootstrap).create_topics([NewTopic("pygroups", 2, 1)])
producer = KafkaProducer(bootstrap_servers=bootstrap)
for i in range(200):
    producer.send("pygroups", key=str(i).encode(), value=str(i).encode(), partition=i % 2)
producer.flush()

admin = KafkaAdminClient(bootstrap_servers=bootstrap)
consumer = KafkaConsumer("pygroups", bootstrap_servers=bootstrap, group_id="py-group",
                         auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=3000)
values = sorted(int(m.value) for m in consumer)
if values != list(range(200)):
    sys.exit(f"group consumer read {len(values)} records")
consumer.commit()

groups = {g["group_id"]: g for g in admin.list_groups()}
if groups.get("py-group", {}).get("group_state") != "Stable":
    sys.exit(f"list_groups: {groups}")
described = admin.describe_groups(["py-group"])["py-group"]
members = described["members"]
if described["group_state"] != "Stable" or len(members) != 1 or members[0]["member_metadata"]["topics"] != ["pygroups"]:
    sys.exit(f"describe_groups: {described}")
offsets = admin.list_group_offsets("py-group")["py-group"]
if {tp.partition: o.offset for tp, o in offsets.items()} != {0: 100, 1: 100}:
    sys.exit(f"list_group_offsets: {offsets}")
consumer.close()  # LeaveGroup: the group is empty at once

described = admin.describe_groups(["py-group"])["py-group"]
if described["group_state"] != "Empty":
    sys.exit(f"after close: {described}")
admin.delete_group_offsets("py-group", [TopicPartition("pygroups", 0)])
offsets = admin.list_group_offsets("py-group")["py-group"]
if [tp.partition for tp in offsets] != [1]:
    sys.exit(f"after delete_group_offsets: {offsets}")

# A new member of the group resumes at the committed offset of partition 1 and from the start of partition 0.
consumer = KafkaConsumer("pygroups", bootstrap_servers=bootstrap, group_id="py-group",
                         auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=3000)
again = sorted(int(m.value) for m in consumer)
consumer.close()
if again != list(range(0, 200, 2)):
    sys.exit(f"resumed consumer read {len(again)} records")

result = admin.delete_groups(["py-group", "no-such-group"])
if result.get("py-group") != "OK" or result.get("no-such-group") == "OK":
    sys.exit(f"delete_groups: {result}")
if "py-group" in {g["group_id"] for g in admin.list_groups()}:
    sys.exit("group still listed after delete")
print("kafka-python groups ok")
