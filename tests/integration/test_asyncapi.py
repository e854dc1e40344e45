#!/usr/bin/python3
"""docs/asyncapi.yaml, the contract for consumers, through the AsyncAPI project's parser.

tests/contract/asyncapi_check.js parses the document with @asyncapi/parser (npm, pinned by
tests/contract/package-lock.json, installed into <build>/npm-contract) and its validation:
an error or a warning fails. The relative $refs into schema/v1 must resolve; every file of
schema/v1 must be used; the MQTT and Kafka event channels must carry a message for every
event type (Kafka: structured and binary), the command channels one for every command.

Then the same check on broken copies of the document must fail, so this test can fail: a
$ref to a schema file that does not exist, a channel that lost an event type, an
operation whose action AsyncAPI 3 does not know. Messages of real runs are checked against
the document by integration_cloudevents_sdk.

Without node or npm the test says SKIP and exits 77 (ctest: skipped, never passed)."""
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import check, contract, util  # noqa: E402

DOC = os.path.join(util.SOURCE_DIR, "docs", "asyncapi.yaml")
SCHEMAS = os.path.join(util.SOURCE_DIR, "schema", "v1")

contract.node_or_skip("docs/asyncapi.yaml")

# (what is broken, text replaced, replacement, a word the FAIL line must name)
BROKEN = [
    ("a $ref to a missing schema file",
     "data: { $ref: '../schema/v1/qmp.vm.resumed.json' }",
     "data: { $ref: '../schema/v1/qmp.vm.resumed-missing.json' }", "resumed-missing"),
    ("the MQTT event channel without qmp.vm.reset",
     "      qmp.vm.reset: { $ref: '#/components/messages/qmp.vm.reset' }\n", "", "qmp.vm.reset"),
    ("an operation with action publish (AsyncAPI 2 wording)",
     "  sendEvents:\n    action: send\n", "  sendEvents:\n    action: publish\n", "action"),
]

with check.Test("asyncapi") as t:
    t.section("npm ci of tests/contract into the build")
    modules = contract.install()
    t.ok("packages installed", modules)

    t.section("docs/asyncapi.yaml through @asyncapi/parser")
    rc, out = contract.run(modules, "asyncapi_check.js", "doc", DOC, SCHEMAS)
    summary = contract.report(t, "asyncapi_check doc", rc, out)
    t.ok("channels, operations, messages", summary["summary"])

    t.section("broken copies must fail")
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    argv = []
    for i, (what, old, new, word) in enumerate(BROKEN):
        t.expect(text.count(old) == 1, "the document holds the text to break once", old)
        base = os.path.join(t.workdir, "broken-%d" % i)
        os.makedirs(os.path.join(base, "docs"))
        shutil.copytree(SCHEMAS, os.path.join(base, "schema", "v1"))
        path = os.path.join(base, "docs", "asyncapi.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace(old, new))
        argv += [path, os.path.join(base, "schema", "v1")]
    rc, out = contract.run(modules, "asyncapi_check.js", "doc", *argv)
    t.expect(rc == 1, "asyncapi_check exits 1", out[-1500:])
    found = {}  # document path -> its FAIL lines
    doc = None
    for line in out.splitlines():
        if line.startswith("DOC "):
            doc = line[4:]
            found[doc] = []
        elif line.startswith("FAIL ") and doc is not None:
            found[doc].append(line)
    for i, (what, old, new, word) in enumerate(BROKEN):
        fails = found.get(argv[2 * i], [])
        t.expect(any(word in l for l in fails), "%s: a FAIL naming %r: %s"
                 % (what, word, fails[0][:160] if fails else None), out[-1500:])
