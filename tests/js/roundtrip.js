// kafkajs 2.2.4 against millrace: admin calls and producing (kafkajs never uses flexible versions, so this
// exercises Produce v7, Metadata v6, CreateTopics v3, ListOffsets v3...). Consumers need consumer groups, which
// millrace does not have yet, so records are checked through ListOffsets (fetchTopicOffsets).
// Usage: node roundtrip.js HOST:PORT
const { Kafka, CompressionTypes, logLevel } = require('kafkajs');

const broker = process.argv[2];
const kafka = new Kafka({ clientId: 'e2e-kafkajs', brokers: [broker], logLevel: logLevel.ERROR });

function check(cond, msg) {
  if (!cond) {
    console.error('FAILED: ' + msg);
    process.exit(1);
  }
}

(async () => {
  const admin = kafka.admin();
  await admin.connect();
  check(await admin.createTopics({ topics: [{ topic: 'js-topic', numPartitions: 3 }], waitForLeaders: true }), 'created');
  check(!(await admin.createTopics({ topics: [{ topic: 'js-topic', numPartitions: 3 }] })), 'second create returns false');
  const md = await admin.fetchTopicMetadata({ topics: ['js-topic'] });
  check(md.topics[0].partitions.length === 3, 'three partitions: ' + JSON.stringify(md));

  const producer = kafka.producer({ allowAutoTopicCreation: false, idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  for (const compression of [CompressionTypes.None, CompressionTypes.GZIP]) {
    for (let batch = 0; batch < 10; batch++) {
      const messages = [];
      for (let i = 0; i < 30; i++) {
        messages.push({ key: `k${batch}-${i}`, value: `v${batch}-${i}`, partition: i % 3, headers: { h: 'x' } });
      }
      const res = await producer.send({ topic: 'js-topic', acks: -1, compression, messages });
      check(res.every((r) => r.errorCode === 0), 'produce ok: ' + JSON.stringify(res));
    }
  }
  await producer.disconnect();
  const offsets = await admin.fetchTopicOffsets('js-topic');
  const total = offsets.reduce((n, p) => n + Number(p.high) - Number(p.low), 0);
  check(total === 600, 'fetchTopicOffsets total ' + JSON.stringify(offsets));

  await admin.deleteTopics({ topics: ['js-topic'] });
  const left = await admin.listTopics();
  check(!left.includes('js-topic'), 'deleted: ' + left);
  await admin.disconnect();
  console.log('kafkajs round trip ok');
})().catch((e) => {
  console.error('FAILED', e);
  process.exit(1);
});
