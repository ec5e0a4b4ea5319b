// kafkajs consumer groups against millrace: two consumers in one group share a 4-partition topic, each record
// is consumed once, offsets are committed, and a restarted consumer resumes after them.
// Usage: node groups.js HOST:PORT
const { Kafka, logLevel } = require('kafkajs');

const kafka = new Kafka({ clientId: 'e2e-kafkajs-groups', brokers: [process.argv[2]], logLevel: logLevel.NOTHING });

function fail(msg) {
  console.error('FAILED: ' + msg);
  process.exit(1);
}

async function consumeUntil(consumers, seen, total, ms) {
  const deadline = Date.now() + ms;
  while (seen.length < total && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
  }
}

(async () => {
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic: 'js-groups', numPartitions: 4 }] });
  const producer = kafka.producer();
  await producer.connect();
  const messages = [];
  for (let i = 0; i < 400; i++) messages.push({ value: String(i), partition: i % 4 });
  await producer.send({ topic: 'js-groups', messages });
  await producer.disconnect();

  const seen = [];
  const consumers = [];
  for (let n = 0; n < 2; n++) {
    const c = kafka.consumer({ groupId: 'js-group', sessionTimeout: 10000, heartbeatInterval: 500 });
    await c.connect();
    await c.subscribe({ topic: 'js-groups', fromBeginning: true });
    await c.run({ eachMessage: async ({ message }) => { seen.push(Number(message.value.toString())); } });
    consumers.push(c);
  }
  await consumeUntil(consumers, seen, 400, 60000);
  if (seen.length !== 400 || new Set(seen).size !== 400) fail(`consumed ${seen.length} (${new Set(seen).size} distinct)`);
  for (const c of consumers) await c.disconnect();

  const offsets = await admin.fetchOffsets({ groupId: 'js-group', topics: ['js-groups'] });
  const committed = offsets[0].partitions.map((p) => Number(p.offset)).reduce((a, b) => a + b, 0);
  if (committed !== 400) fail('committed offsets ' + JSON.stringify(offsets));

  // A new member resumes after the commits: a record produced now is the only one it sees.
  const p2 = kafka.producer();
  await p2.connect();
  await p2.send({ topic: 'js-groups', messages: [{ value: '400', partition: 0 }] });
  await p2.disconnect();
  const later = [];
  const c = kafka.consumer({ groupId: 'js-group' });
  await c.connect();
  await c.subscribe({ topic: 'js-groups', fromBeginning: true });
  await c.run({ eachMessage: async ({ message }) => { later.push(Number(message.value.toString())); } });
  await consumeUntil([c], later, 1, 30000);
  await new Promise((r) => setTimeout(r, 1000));
  await c.disconnect();
  if (later.length !== 1 || later[0] !== 400) fail('resumed consumer saw ' + JSON.stringify(later));
  const groups = await admin.listGroups();
  if (!groups.groups.some((g) => g.groupId === 'js-group')) fail('listGroups ' + JSON.stringify(groups));
  await admin.disconnect();
  console.log('kafkajs groups ok');
})().catch((e) => fail(e.stack || e));
