// sign_command.js - sign a qmp-bridge command in JavaScript (Node.js 12 or later).
//
// The signature is the hex HMAC-SHA256 of the command's canonical text
// (docs/commands-and-security.md, Signing): the command without "signature", object keys sorted by code
// point at every level, no whitespace, strings as JSON.stringify writes them,
// integers in decimal. JSON.stringify alone is not enough: Array.prototype.sort()
// orders keys by UTF-16 code unit (U+1F600 before U+FF01), and a Number cannot
// hold an integer beyond 2^53-1 exactly, so such integers must be BigInt, which
// JSON.stringify refuses. Send the signed command as canonical(signed) for the same
// reason (any JSON text of it is fine; the bridge re-serialises before checking).
//
//   const { sign, canonical } = require('./sign_command.js');
//   const cmd = sign({ specversion: '1.0', id: 'c-1', source: 'orchestrator-1',
//                      type: 'qmp.command.resize-and-cont', subject: 'vm1',
//                      bridge,  // required with a key: the signature names its bridge
//                      time: new Date().toISOString(),
//                      data: { device: 'data', grow_by: 1073741824n } }, key);
//   publish(`qmp/${bridge}/vm1/command`, canonical(cmd));
'use strict';

const crypto = require('crypto');

// Orders two strings by code point, which is the byte order of their UTF-8.
function compareCodePoints(a, b) {
  const ia = a[Symbol.iterator]();
  const ib = b[Symbol.iterator]();
  for (;;) {
    const x = ia.next();
    const y = ib.next();
    if (x.done || y.done) return (x.done ? 0 : 1) - (y.done ? 0 : 1);
    const d = x.value.codePointAt(0) - y.value.codePointAt(0);
    if (d !== 0) return d;
  }
}

// The canonical JSON text of value (a string). Integers are BigInt, or Numbers up to
// 2^53-1; anything else numeric is refused, as the bridge refuses real numbers.
function canonical(value) {
  if (value === null || typeof value === 'boolean') return String(value);
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) {
      throw new RangeError(`cannot sign ${value}: integers only, BigInt beyond 2^53-1`);
    }
    return String(value);
  }
  if (typeof value === 'string') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (typeof value === 'object') {
    const keys = Object.keys(value).sort(compareCodePoints);
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(',')}}`;
  }
  throw new TypeError(`cannot sign a value of type ${typeof value}`);
}

// A copy of command with "signature" set; key is a Buffer or string (the key file's bytes).
function sign(command, key) {
  const body = { ...command };
  delete body.signature;
  const signature = crypto.createHmac('sha256', key).update(canonical(body), 'utf8').digest('hex');
  return { ...command, signature };
}

module.exports = { canonical, sign, compareCodePoints };
