#!/usr/bin/python3
"""Signing in JavaScript: examples/sign_command.js against the vectors and the bridge.

Runs the JavaScript recipe under node, as examples/sign_command.js has it and as the
docs/commands-and-security.md prints it (tests/tools/sign_vectors.js reads the
vectors with every integer as a BigInt): for every vector of
tests/unit/data/signing-vectors.json the canonical text (as UTF-8 bytes) and the
signature must be exactly the published ones. Then a stop whose source holds U+001F, a
newline, U+007F and an astral character, signed by node and sent as node wrote it, is
accepted by the bridge and reaches QEMU.

Without node (Debian package nodejs) the test says SKIP and exits 77: ctest reports it as
skipped, never as passed."""
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import check, cmdrig, commands, util  # noqa: E402

VECTORS = os.path.join(util.SOURCE_DIR, "tests", "unit", "data", "signing-vectors.json")
TOOL = os.path.join(util.SOURCE_DIR, "tests", "tools", "sign_vectors.js")
KEY = b"integration-signing-key-0123456789"

NODE = shutil.which("node") or shutil.which("nodejs")
if NODE is None:
    print("SKIP node (Debian package nodejs) is not installed: the JavaScript signing recipe "
          "is not checked")
    sys.exit(77)


def doc_recipe(workdir):
    """The JavaScript block of docs/commands-and-security.md, as a module file exporting
    canonical and sign."""
    with open(os.path.join(util.SOURCE_DIR, "docs", "commands-and-security.md"),
              encoding="utf-8") as f:
        text = f.read()
    start = text.index("```js\n", text.index("\n## Signing\n")) + 6
    path = os.path.join(workdir, "doc_recipe.js")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text[start:text.index("```", start)] + "module.exports = { canonical, sign };\n")
    return path


def node(*args, stdin=None, recipe=None):
    env = dict(os.environ, QB_SIGN_RECIPE=recipe) if recipe else None
    r = subprocess.run([NODE, TOOL] + list(args), input=stdin, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60, check=False, env=env)
    if r.returncode != 0:
        raise RuntimeError("node %s: exit %d: %s" % (" ".join(args), r.returncode,
                                                     r.stderr.decode("utf-8", "replace")))
    return r.stdout


with check.Test("signing_js") as t:
    version = subprocess.run([NODE, "--version"], stdout=subprocess.PIPE, check=True).stdout
    with open(VECTORS, encoding="utf-8") as f:
        doc = json.load(f)
    for label, recipe in (("examples/sign_command.js", None),
                          ("docs/commands-and-security.md", doc_recipe(t.workdir))):
        t.section("vectors: %s under %s %s" % (label, NODE, version.decode().strip()))
        got = [json.loads(l) for l in node("vectors", VECTORS, recipe=recipe).decode().splitlines()]
        t.expect([g["name"] for g in got] == [v["name"] for v in doc["vectors"]],
                 "one answer per vector", [g["name"] for g in got])
        for v, g in zip(doc["vectors"], got):
            want = v["canonical"].encode("utf-8")
            t.expect(bytes.fromhex(g["canonical_hex"]) == want, "%-22s canonical text" % v["name"],
                     "\n    got  %r\n    want %r" % (bytes.fromhex(g["canonical_hex"]), want))
            t.expect(g["signature"] == v["signature"],
                     "%-22s signature %s" % (v["name"], v["signature"][:16]), g["signature"])

    t.section("bridge: accepts a stop signed by node")
    keyfile = cmdrig.write_key(t.workdir, KEY)
    rig = cmdrig.CommandRig(t, "commands: { enabled: true, allow: [stop], hmac_key_file: %s }\n"
                            % json.dumps(keyfile)).start()
    cmd = commands.make("stop", "vm1", source="js\u001f\n\u007f-\u00e9-\U0001F600", bridge="test-host")
    signed = node("sign", keyfile, stdin=json.dumps(cmd).encode())
    t.ok("node signed it: %s" % signed.decode("utf-8", "replace")[-80:].encode("unicode_escape").decode())
    rig.publish(signed, reply=cmd["id"])
    res = rig.result(cmd["id"])["data"]
    t.expect(res["status"] == "ok", "signed stop -> %s" % res["status"], res)
    t.expect(rig.qmp_seen().count("stop") == 1, "QEMU got the stop")
    rc = rig.br.stop()
    t.expect(rc == 0, "SIGTERM: exit 0", rc)
