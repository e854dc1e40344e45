// sign_vectors.js - runs the JavaScript signing recipe (examples/sign_command.js) for tests.
//
//   node sign_vectors.js vectors FILE   one JSON line per vector of FILE:
//                                       {"name", "canonical_hex", "signature"}
//   node sign_vectors.js sign KEYFILE   reads one command (JSON) on stdin, writes it signed
//
// QB_SIGN_RECIPE=FILE runs the recipe in FILE (exporting canonical and sign) instead.
//
// JSON is read with a small parser that keeps every integer as a BigInt (JSON.parse would
// round 2^53+1), which is what a JavaScript signer holding such integers has in hand.
'use strict';

const fs = require('fs');
const path = require('path');

// QB_SIGN_RECIPE: another copy of the recipe to run (the test passes the one in docs/commands-and-security.md).
const recipe = process.env.QB_SIGN_RECIPE
  || path.join(__dirname, '..', '..', 'examples', 'sign_command.js');
const { canonical, sign } = require(path.resolve(recipe));

function parseBig(text) {
  const token = /\s*(?:("(?:[^"\\]|\\.)*")|(-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?)|(true|false|null)|([{}[\]:,]))/y;
  let next = null;
  const read = () => {
    const m = token.exec(text);
    if (!m) throw new SyntaxError(`bad JSON at offset ${token.lastIndex}`);
    return m;
  };
  const peek = () => (next = next || read());
  const take = () => { const m = peek(); next = null; return m; };
  const expect = (ch) => { if (take()[4] !== ch) throw new SyntaxError(`expected ${ch}`); };
  function value() {
    const m = take();
    if (m[1] !== undefined) return JSON.parse(m[1]);
    if (m[2] !== undefined) return /[.eE]/.test(m[2]) ? Number(m[2]) : BigInt(m[2]);
    if (m[3] !== undefined) return JSON.parse(m[3]);
    if (m[4] === '[') {
      const a = [];
      if (peek()[4] === ']') { take(); return a; }
      for (;;) {
        a.push(value());
        if (take()[4] === ']') return a;
      }
    }
    if (m[4] === '{') {
      const o = {};
      if (peek()[4] === '}') { take(); return o; }
      for (;;) {
        const k = take();
        if (k[1] === undefined) throw new SyntaxError('expected a key');
        expect(':');
        Object.defineProperty(o, JSON.parse(k[1]),
          { value: value(), enumerable: true, writable: true, configurable: true });
        if (take()[4] === '}') return o;
      }
    }
    throw new SyntaxError(`unexpected ${m[0]}`);
  }
  const v = value();
  if (!/^\s*$/.test(text.slice(token.lastIndex))) throw new SyntaxError('trailing text');
  return v;
}

const [mode, file] = process.argv.slice(2);
if (mode === 'vectors') {
  const doc = parseBig(fs.readFileSync(file, 'utf8'));
  for (const v of doc.vectors) {
    const body = { ...v.command };
    delete body.signature;
    const text = canonical(body);
    const signed = sign(v.command, doc.key);
    process.stdout.write(`${JSON.stringify({
      name: v.name,
      canonical_hex: Buffer.from(text, 'utf8').toString('hex'),
      signature: signed.signature,
    })}\n`);
  }
} else if (mode === 'sign') {
  let key = fs.readFileSync(file);
  if (key.length && key[key.length - 1] === 0x0a) key = key.subarray(0, key.length - 1);
  const command = parseBig(fs.readFileSync(0, 'utf8'));
  process.stdout.write(canonical(sign(command, key)));
} else {
  process.stderr.write('usage: sign_vectors.js vectors FILE | sign KEYFILE < command.json\n');
  process.exit(2);
}
