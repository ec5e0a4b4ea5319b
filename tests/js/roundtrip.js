#!/usr/bin/env node
// kafkajs against a running millrace broker: usage `node roundtrip.js HOST:PORT`.
// Producer (no compression and gzip) and admin (createTopics, fetchTopicMetadata, fetchTopicOffsets,
// deleteTopics). kafkajs consumers need consumer groups, which millrace does not have yet, so records are
// checked through the offsets the broker acknowledges and the topic's watermarks. Exits non-zero on a mismatch.
'use strict';

const { Kafka, CompressionTypes, logLevel } = require('kafkajs');

const broker = process.argv[2] || '127.0.0.1:9092';
const kafka = new Kafka({
  clientId: 'millrace-js-test',
  brokers: [broker],
  logLevel: logLevel.WARN,
  retry: { retries: 3 },
});

function check(cond, msg) {
  if (!cond) {
    throw new Error(msg);
  }
}

const suffix = Math.random().toString(16).slice(2, 10);

async function roundtrip(admin, name, compression) {
  const topic = `js-${name}-${suffix}`;
  const created = await admin.createTopics({
    topics: [{ topic, numPartitions: 2, replicationFactor: 1 }],
    waitForLeaders: true,
  });
  check(created === true, `${topic}: createTopics returned ${created}`);

  const md = await admin.fetchTopicMetadata({ topics: [topic] });
  check(md.topics.length === 1 && md.topics[0].name === topic, `${topic}: metadata ${JSON.stringify(md)}`);
  check(md.topics[0].partitions.length === 2, `${topic}: ${md.topics[0].partitions.length} partitions`);

  const producer = kafka.producer({ allowAutoTopicCreation: false });
  await producer.connect();
  const perPartition = [0, 0];
  for (let round = 0; round < 5; round++) {
    const messages = [];
    for (let i = 0; i < 40; i++) {
      const n = round * 40 + i;
      const partition = n % 2;
      messages.push({
        partition,
        key: n % 7 === 3 ? null : `key-${n}`,
        value: n % 11 === 5 ? null : Buffer.alloc(100 + (n % 13), n % 251),
        headers: n % 2 === 0 ? { h: `v${n}` } : undefined,
        timestamp: String(1700000000000 + n),
      });
    }
    const acks = await producer.send({ topic, compression, acks: -1, messages });
    for (const ack of acks) {
      check(ack.errorCode === 0, `${topic}: produce error ${JSON.stringify(ack)}`);
      // Each partition's base offset continues where the previous batch ended.
      check(
        Number(ack.baseOffset) === perPartition[ack.partition],
        `${topic}: partition ${ack.partition} base offset ${ack.baseOffset}, expected ${perPartition[ack.partition]}`,
      );
      perPartition[ack.partition] += 20;
    }
  }
  await producer.disconnect();

  const offsets = await admin.fetchTopicOffsets(topic);
  check(offsets.length === 2, `${topic}: offsets ${JSON.stringify(offsets)}`);
  for (const o of offsets) {
    check(o.low === '0' && o.high === '100' && o.offset === '100', `${topic}: offsets ${JSON.stringify(o)}`);
  }
  console.log(`ok: ${name} produce (200 records, 2 partitions)`);
  return topic;
}

async function main() {
  const admin = kafka.admin();
  await admin.connect();
  const topics = [];
  topics.push(await roundtrip(admin, 'none', CompressionTypes.None));
  topics.push(await roundtrip(admin, 'gzip', CompressionTypes.GZIP));

  const listed = await admin.listTopics();
  for (const t of topics) {
    check(listed.includes(t), `listTopics lacks ${t}: ${listed}`);
  }

  await admin.deleteTopics({ topics, timeout: 10000 });
  const deadline = Date.now() + 10000;
  let remaining = topics;
  while (remaining.length > 0 && Date.now() < deadline) {
    const now = await admin.listTopics();
    remaining = topics.filter((t) => now.includes(t));
    if (remaining.length > 0) {
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  check(remaining.length === 0, `deleted topics still listed: ${remaining}`);
  console.log('ok: admin (createTopics, fetchTopicMetadata, fetchTopicOffsets, deleteTopics)');
  await admin.disconnect();
  console.log('kafkajs: all ok');
}

main().catch((e) => {
  console.error('FAIL:', e && e.stack ? e.stack : e);
  process.exit(1);
});
