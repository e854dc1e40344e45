'use strict';
// cloudevents_check.js - messages the bridge published, read by the official CloudEvents
// JavaScript SDK (npm "cloudevents") with validation on.
//
//   node cloudevents_check.js captures CAPTURES
//       CAPTURES: JSON lines of messages seen on the brokers (see
//       tests/integration/qbtest/contract.py). A message that should be a CloudEvent
//       (c.event true) goes through the SDK's own binding, MQTT.toEvent (strict) or
//       Kafka.toEvent, which picks structured or binary mode from the message as the
//       bindings say; the event is then built again with new CloudEvent(event, true), which
//       validates it (required attributes, attribute and extension names, extension values,
//       formats), and must hold exactly the attributes and data of the message. A message
//       that is no CloudEvent (status, an empty retained state, a tombstone) must not be
//       taken for one.
//   node cloudevents_check.js envelopes FILE
//       FILE: a JSON array of structured-mode envelopes; each through new CloudEvent(env, true).
//
// Prints "OK"/"FAIL" lines and a last line with the counts as JSON; exits 1 on any FAIL,
// 2 on a usage error. Ownership: none, a script.
const fs = require('fs');
const assert = require('assert');
const { CloudEvent, Kafka, MQTT } = require('cloudevents');

let failures = 0;
const counts = {};

function fail(what) {
  failures++;
  console.log(`FAIL ${what}`);
}

function count(key) {
  counts[key] = (counts[key] || 0) + 1;
}

// The SDK fills in a missing id, time or specversion, so they are checked on the raw message
// (time is optional in CloudEvents, never missing from the bridge's envelopes).
const REQUIRED = ['specversion', 'id', 'source', 'type', 'time'];

// The attributes of the message itself, as a consumer without the SDK would read them.
function rawAttributes(c) {
  if (c.mode === 'binary') {
    const attrs = { datacontenttype: c.headers['content-type'] };
    for (const [k, v] of Object.entries(c.headers)) {
      if (k.startsWith('ce_')) attrs[k.slice(3)] = v;
    }
    return { attrs, data: JSON.parse(c.payload) };
  }
  const env = JSON.parse(c.payload);
  const { data, ...attrs } = env;
  return { attrs, data };
}

function toMessage(c) {
  if (c.transport === 'mqtt') {
    return { PUBLISH: { 'Content Type': c.content_type || undefined }, body: c.payload, headers: {} };
  }
  return { key: c.key, value: c.payload, headers: c.headers || {} };
}

// Validated SDK event of capture c; throws on anything the SDK refuses.
function sdkEvent(c) {
  const msg = toMessage(c);
  const event = c.transport === 'mqtt' ? MQTT.toEvent(msg, true) : Kafka.toEvent(msg);
  // the bindings build events without validation: build it again with it
  const strict = new CloudEvent({ ...event }, true);
  if (strict.validate() !== true) throw new Error('validate() did not return true');
  return strict;
}

function sameTime(a, b) {
  // the SDK's Kafka binding rewrites time with Date.toISOString(): milliseconds only
  return new Date(a).toISOString() === new Date(b).toISOString();
}

function checkCapture(c, i) {
  const what = `capture ${i + 1} (${c.transport}${c.mode ? ' ' + c.mode : ''} ${c.topic})`;
  const msg = toMessage(c);
  const isEvent = c.transport === 'mqtt' ? MQTT.isEvent(msg) : Kafka.isEvent(msg);
  if (!c.event) {
    if (isEvent) fail(`${what}: the SDK takes a message that is no CloudEvent for one`);
    else count(`${c.transport} not an event: ${c.kind}`);
    return;
  }
  if (!isEvent) {
    fail(`${what}: the SDK does not see a CloudEvent`);
    return;
  }
  let raw;
  let event;
  try {
    raw = rawAttributes(c);
    for (const a of REQUIRED) {
      if (typeof raw.attrs[a] !== 'string' || raw.attrs[a] === '') throw new Error(`no ${a} attribute`);
    }
    event = sdkEvent(c);
  } catch (e) {
    fail(`${what}: ${e.message}${e.errors ? ' ' + JSON.stringify(e.errors).slice(0, 400) : ''}\n    ` +
         `${JSON.stringify(c).slice(0, 400)}`);
    return;
  }
  try {
    const attrs = Object.fromEntries(Object.entries({ ...event })
      .filter(([k, v]) => k !== 'data' && v !== undefined));
    assert.deepStrictEqual(Object.keys(attrs).sort(), Object.keys(raw.attrs).sort(), 'attribute names');
    for (const [k, v] of Object.entries(raw.attrs)) {
      if (k === 'time') assert.ok(sameTime(attrs.time, v), `time ${attrs.time} vs ${v}`);
      else assert.strictEqual(attrs[k], v, `attribute ${k}`);
    }
    assert.deepStrictEqual(event.data, raw.data, 'data');
    if (c.transport === 'kafka') assert.strictEqual(event.partitionkey, c.key, 'partitionkey is the key');
  } catch (e) {
    fail(`${what}: the SDK's event differs from the message: ${e.message}`);
    return;
  }
  count(`${c.transport}${c.mode ? ' ' + c.mode : ''} ${event.type}`);
}

function main() {
  const [cmd, file] = process.argv.slice(2);
  if (cmd === 'captures' && file) {
    const lines = fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.trim());
    lines.forEach((l, i) => checkCapture(JSON.parse(l), i));
  } else if (cmd === 'envelopes' && file) {
    for (const env of JSON.parse(fs.readFileSync(file, 'utf8'))) {
      try {
        const event = new CloudEvent(env, true);
        assert.deepStrictEqual(event.data, env.data, 'data');
        count(`envelope ${event.type}`);
      } catch (e) {
        fail(`envelope ${env.type} ${env.id}: ${e.message}`);
      }
    }
  } else {
    console.error('usage: cloudevents_check.js captures FILE | envelopes FILE');
    process.exit(2);
  }
  for (const [k, n] of Object.entries(counts).sort()) console.log(`OK ${n} x ${k}`);
  console.log(JSON.stringify({ failures, counts }));
  process.exit(failures ? 1 : 0);
}

main();
