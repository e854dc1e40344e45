'use strict';
// asyncapi_check.js - docs/asyncapi.yaml through the AsyncAPI project's own parser.
//
//   node asyncapi_check.js doc DOC SCHEMA_DIR [DOC SCHEMA_DIR ...]
//       parses and validates each DOC (its relative $refs resolved from its folder); any
//       diagnostic of severity error or warning fails (exit 1), infos are printed. Then
//       checks that every SCHEMA_DIR/*.json is used by some message, and that each
//       channel that carries CloudEvents has a message for every type its operation sends.
//       Each document's findings follow a line "DOC <path>" (one process for several
//       documents: loading the parser takes seconds).
//   node asyncapi_check.js messages DOC CAPTURES
//       CAPTURES: JSON lines of messages seen on the brokers (see
//       tests/integration/qbtest/contract.py). Each must fit one message of the channel
//       whose address matches its topic (or of the reply of the operation it names):
//       payload and headers valid against that message's schemas, and its content type; a
//       retained MQTT message only on a channel whose operation retains.
//
// Prints one line per finding, "OK ..." or "FAIL ...", and a last line with the counts
// as JSON; exits 1 on any FAIL, 2 on a usage error. Ownership: none, a script.
const fs = require('fs');
const path = require('path');
const { Parser, fromFile } = require('@asyncapi/parser');
const Ajv2020 = require('ajv/dist/2020').default;
const addFormats = require('ajv-formats');

const SEVERITY = ['error', 'warning', 'info', 'hint'];
let failures = 0;

function fail(what) {
  failures++;
  console.log(`FAIL ${what}`);
}

async function parse(docPath) {
  const parser = new Parser();
  const { document, diagnostics } = await fromFile(parser, docPath).parse();
  for (const d of diagnostics) {
    const line = `${SEVERITY[d.severity] || d.severity} ${d.code} at ${JSON.stringify(d.path)}: ${d.message}`;
    if (d.severity <= 1) fail(`asyncapi parser: ${line}`);
    else console.log(`INFO asyncapi parser: ${line}`);
  }
  if (!document) fail('asyncapi parser: no document');
  return document;
}

// The CloudEvents type a message's payload or headers pins with a const, if any.
function pinnedType(schema) {
  if (!schema || typeof schema !== 'object') return undefined;
  const own = schema.properties && (schema.properties.type || schema.properties.ce_type);
  if (own && typeof own.const === 'string') return own.const;
  for (const sub of schema.allOf || []) {
    const t = pinnedType(sub);
    if (t) return t;
  }
  return undefined;
}

function messageType(msg) {
  return pinnedType(msg.headers() ? msg.headers().json() : undefined) ||
         pinnedType(msg.payload() ? msg.payload().json() : undefined);
}

function checkDoc(document, docPath, schemaDir) {
  const text = fs.readFileSync(docPath, 'utf8');
  const files = fs.readdirSync(schemaDir).filter((f) => f.endsWith('.json')).sort();
  for (const f of files) {
    if (text.includes(`'../schema/v1/${f}`)) {
      console.log(`OK schema/v1/${f} is referenced`);
    } else {
      fail(`schema/v1/${f} is not referenced by any message of ${path.basename(docPath)}`);
    }
  }
  // Each event type of schema/v1 (a file that is neither an envelope nor a command) must be
  // a message on every channel that carries events, in each of its encodings.
  const eventTypes = files.map((f) => f.replace(/\.json$/, ''))
    .filter((t) => !['envelope', 'command'].includes(t) && !t.startsWith('qmp.command.'));
  const commandTypes = files.map((f) => f.replace(/\.json$/, '')).filter((t) => t.startsWith('qmp.command.'));
  const want = {
    mqttEvents: [['', eventTypes]],
    kafkaEvents: [['kafka.', eventTypes], ['kafka-binary.', eventTypes]],
    mqttCommands: [['', commandTypes]],
    kafkaCommands: [['kafka.', commandTypes]],
  };
  for (const [chName, sets] of Object.entries(want)) {
    const ch = document.channels().get(chName);
    if (!ch) {
      fail(`no channel ${chName}`);
      continue;
    }
    for (const [prefix, types] of sets) {
      for (const t of types) {
        const m = ch.messages().get(prefix + t);
        if (!m) fail(`channel ${chName} has no message ${prefix + t}`);
        else if (messageType(m) !== t) fail(`${chName}/${prefix + t} pins type ${messageType(m)}, not ${t}`);
      }
      console.log(`OK channel ${chName}: ${types.length} messages ${prefix || '(structured)'}<type>`);
    }
  }
}

// A deep copy without the keywords that would make ajv treat a resolved subtree as its own
// schema resource ($id, $schema) and without the parser's own annotations.
function plain(schema) {
  if (Array.isArray(schema)) return schema.map(plain);
  if (!schema || typeof schema !== 'object') return schema;
  const out = {};
  for (const [k, v] of Object.entries(schema)) {
    if (k === '$id' || k === '$schema' || k.startsWith('x-parser-')) continue;
    out[k] = plain(v);
  }
  return out;
}

function addressRegex(address) {
  const esc = address.replace(/[.*+?^$()|[\]\\]/g, '\\$&');
  return new RegExp(`^${esc.replace(/\\?\{[a-z]+\\?\}/gi, '[^/]+')}$`);
}

function checkMessages(document, capturesPath) {
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  addFormats(ajv);
  const validators = new Map();
  const validator = (schema) => {
    if (!validators.has(schema)) validators.set(schema, ajv.compile(plain(schema.json())));
    return validators.get(schema);
  };
  const channels = document.channels().all().map((ch) => ({ ch, re: addressRegex(ch.address()) }));
  const counts = {};
  const lines = fs.readFileSync(capturesPath, 'utf8').split('\n').filter((l) => l.trim());
  for (const [i, line] of lines.entries()) {
    const c = JSON.parse(line);
    let candidates;
    let where;
    if (c.reply_of) {
      const op = document.operations().get(c.reply_of);
      candidates = op && op.reply() ? op.reply().messages().all() : [];
      where = `reply of ${c.reply_of}`;
    } else {
      const hits = channels.filter(({ ch, re }) =>
        re.test(c.topic) && ch.servers().all().some((s) => s.protocol() === c.transport));
      if (hits.length !== 1) {
        fail(`capture ${i + 1} (${c.transport} ${c.topic}) matches ${hits.length} channels`);
        continue;
      }
      candidates = hits[0].ch.messages().all();
      where = hits[0].ch.id();
      // a retained message must be on a channel whose operation retains (a live subscription
      // sees the flag cleared, so only a set flag says something)
      const retains = hits[0].ch.operations().all().some((op) => {
        const b = op.bindings().get('mqtt');
        return b && b.value().retain === true;
      });
      if (c.retained && !retains) {
        fail(`capture ${i + 1} (${c.transport} ${c.topic}) is retained, ${where} is not`);
        continue;
      }
    }
    let payload = c.payload;
    if (payload !== null && c.json) payload = JSON.parse(payload);
    const errors = [];
    const fits = candidates.filter((m) => {
      // MQTT 5 says the content type in a property: the one the message's binding names,
      // or none. Kafka says it in a header, which the headers schema checks.
      if (c.transport === 'mqtt') {
        const binding = m.bindings().get('mqtt');
        const want = (binding && binding.value().contentType) || null;
        if ((c.content_type || null) !== want) {
          errors.push(`${m.id()}: content type ${c.content_type}, want ${want}`);
          return false;
        }
      }
      if (m.payload() && !validator(m.payload())(payload)) {
        errors.push(`${m.id()}: ${ajv.errorsText(validator(m.payload()).errors).slice(0, 300)}`);
        return false;
      }
      if (m.headers() && !validator(m.headers())(c.headers || {})) {
        errors.push(`${m.id()} headers: ${ajv.errorsText(validator(m.headers()).errors).slice(0, 300)}`);
        return false;
      }
      if (!m.headers() && c.headers && Object.keys(c.headers).length) return false;
      return true;
    });
    if (fits.length === 0) {
      fail(`capture ${i + 1} (${c.transport} ${c.topic}) fits no message of ${where}: ` +
           `${errors.slice(0, 3).join('; ') || 'content type or headers differ'}\n    ${line.slice(0, 400)}`);
      continue;
    }
    const key = `${where} ${fits.map((m) => m.id()).join('|')}`;
    counts[key] = (counts[key] || 0) + 1;
  }
  for (const [k, n] of Object.entries(counts).sort()) console.log(`OK ${n} x ${k}`);
  return counts;
}

async function main() {
  const [cmd, ...args] = process.argv.slice(2);
  const pairs = [];
  for (let i = 0; i + 1 < args.length; i += 2) pairs.push([args[i], args[i + 1]]);
  if (!['doc', 'messages'].includes(cmd) || !pairs.length || args.length % 2 ||
      (cmd === 'messages' && pairs.length !== 1)) {
    console.error('usage: asyncapi_check.js doc DOC SCHEMA_DIR [DOC SCHEMA_DIR ...] | messages DOC CAPTURES');
    process.exit(2);
  }
  let summary = {};
  for (const [docPath, arg] of pairs) {
    console.log(`DOC ${docPath}`);
    const document = await parse(path.resolve(docPath));
    if (document && cmd === 'doc') {
      checkDoc(document, docPath, arg);
      summary = { channels: document.channels().all().length,
                  operations: document.operations().all().length,
                  messages: document.components().messages().all().length };
    } else if (document) {
      summary = checkMessages(document, arg);
    }
  }
  console.log(JSON.stringify({ failures, summary }));
  process.exit(failures ? 1 : 0);
}

main().catch((e) => {
  console.log(`FAIL ${e.stack || e}`);
  process.exit(1);
});
