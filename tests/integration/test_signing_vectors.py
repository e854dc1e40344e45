#!/usr/bin/python3
"""Signing: the Python recipe, the published vectors and the bridge agree byte for byte.

Vectors: tests/unit/data/signing-vectors.json (control characters, non-ASCII, an astral
character, 2^53+1 and 2^63-1, nested data, '/', '"' and '\\', key order by code point).
Every Python signer, the recipe of docs/commands-and-security.md run as printed,
examples/orchestrator.py and qbtest.commands (which every other test signs with), must
produce exactly each vector's canonical bytes and signature. (unit_command_canonical holds
the bridge to the same file; integration_signing_js the JavaScript recipe.)

Bridge: with commands.hmac_key_file set, a stop whose source holds U+001F, a newline,
U+007F and non-ASCII, signed by each Python signer, is accepted and reaches QEMU; a
signed command holding a real number is rejected as invalid, naming the field."""
import importlib.util
import json
import os
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import check, cmdrig, commands, util  # noqa: E402

VECTORS = os.path.join(util.SOURCE_DIR, "tests", "unit", "data", "signing-vectors.json")
KEY = b"integration-signing-key-0123456789"
SIGNING_DOC = os.path.join(util.SOURCE_DIR, "docs", "commands-and-security.md")


def doc_block(lang):
    """The first ```<lang> block after the Signing heading of docs/commands-and-security.md."""
    with open(SIGNING_DOC, encoding="utf-8") as f:
        text = f.read()
    at = text.index("\n## Signing\n")
    start = text.index("```%s\n" % lang, at) + len(lang) + 4
    return text[start:text.index("```", start)]


class DocRecipe:
    """The documented Python recipe (docs/commands-and-security.md), run as printed."""

    def __init__(self):
        ns = {}
        exec(compile(doc_block("python"), SIGNING_DOC + " (python)", "exec"), ns)  # noqa: S102
        self.canonical, self.sign = ns["canonical"], ns["sign"]


def load_orchestrator():
    path = os.path.join(util.SOURCE_DIR, "examples", "orchestrator.py")
    spec = importlib.util.spec_from_file_location("orchestrator", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def vectors_section(t, signers):
    with open(VECTORS, encoding="utf-8") as f:
        doc = json.load(f)
    key = doc["key"].encode("utf-8")
    for label, mod in signers:
        t.section("vectors: %s" % label)
        for v in doc["vectors"]:
            got = mod.canonical(v["command"])
            t.expect(got == v["canonical"].encode("utf-8"), "%-22s canonical text" % v["name"],
                     "\n    got  %r\n    want %r" % (got, v["canonical"].encode("utf-8")))
            sig = mod.sign(v["command"], key)["signature"]
            t.expect(sig == v["signature"], "%-22s signature %s" % (v["name"], sig[:16]), sig)


def bridge_section(t, signers):
    keyfile = cmdrig.write_key(t.workdir, KEY)
    rig = cmdrig.CommandRig(t, "commands: { enabled: true, allow: [stop, cont], hmac_key_file: %s }\n"
                            % json.dumps(keyfile)).start()

    t.section("bridge: accepts a signed command whose source holds control characters")
    for label, mod in signers:
        cmd = commands.make("stop", "vm1", source="orch\u001f\n\u007f-\u00e9-\u65e5\u672c-\U0001F600",
                            bridge="test-host")
        cmd = mod.sign(cmd, KEY)
        before = rig.qmp_seen().count("stop")
        rig.publish(cmd, reply=cmd["id"])
        res = rig.result(cmd["id"])["data"]
        t.expect(res["status"] == "ok", "%s: signed stop -> %s" % (label, res["status"]), res)
        t.expect(rig.qmp_seen().count("stop") == before + 1, "%s: QEMU got the stop" % label)

    t.section("bridge: a signed real number is refused with a clear error")
    cmd = commands.make("cont", "vm1", data={"grow_by": 1.5}, key=KEY, cmd_id=str(uuid.uuid4()),
                        bridge="test-host")
    rig.publish(cmd, reply=cmd["id"])
    # not authenticated (the signature cannot be checked), so judged by its log line
    line = rig.br.wait_log("command %s rejected (invalid): data.grow_by: a real number cannot be "
                           "signed (1.5); signed commands carry integers only" % cmd["id"])[0]
    t.ok("rejected: " + line.split("rejected ", 1)[1])
    t.expect("cont" not in rig.qmp_seen(), "QEMU got no cont")
    t.expect(rig.br.alive(), "bridge still running")
    rc = rig.br.stop()
    t.expect(rc == 0, "SIGTERM: exit 0", rc)


with check.Test("signing_vectors") as t:
    signers = [("docs/commands-and-security.md", DocRecipe()),
               ("examples/orchestrator.py", load_orchestrator()), ("qbtest.commands", commands)]
    vectors_section(t, signers)
    bridge_section(t, signers)
