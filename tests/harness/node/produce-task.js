// Produce one pixfleet Task (JSON, schema v1) onto the task topic, as any external system may.
// usage: node produce-task.js HOST:PORT TOPIC TASK_JSON
const { Kafka, logLevel } = require("kafkajs");

async function main() {
  const [broker, topic, body] = process.argv.slice(2);
  const task = JSON.parse(body);
  const kafka = new Kafka({ clientId: "pixfleet-kafkajs-test", brokers: [broker], logLevel: logLevel.WARN });
  const producer = kafka.producer({ allowAutoTopicCreation: false });
  await producer.connect();
  await producer.send({
    topic,
    acks: -1,
    messages: [{ key: task.id, value: JSON.stringify(task), headers: { "pixfleet-groups": task.groups.join(",") } }],
  });
  await producer.disconnect();
}

main().catch((err) => { console.error(err); process.exit(1); });
