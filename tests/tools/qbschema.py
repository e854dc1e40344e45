"""qbschema - validate qmp-bridge envelopes against schema/v1.

Used by tests/tools/validate_events.py (the CLI) and by the Python
integration tests:

    from qbschema import validate_envelope
    validate_envelope(json.loads(line))   # raises jsonschema.ValidationError

Every envelope is checked against envelope.json, then its data against
schema/v1/<type>.json. The schema directory defaults to the one in this
source tree; set QB_SCHEMA_DIR to check an installed copy.
"""
import json
import os

import jsonschema
from jsonschema import Draft202012Validator

SCHEMA_DIR = os.environ.get(
    "QB_SCHEMA_DIR",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "schema", "v1"))

_validators = {}


def _validator(name):
    """Returns the cached validator for schema/v1/<name>.json (loads it once)."""
    v = _validators.get(name)
    if v is None:
        path = os.path.join(SCHEMA_DIR, name + ".json")
        if not os.path.isfile(path):
            raise jsonschema.ValidationError("no schema for type %r (%s)" % (name, path))
        with open(path, encoding="utf-8") as f:
            schema = json.load(f)
        Draft202012Validator.check_schema(schema)
        v = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
        _validators[name] = v
    return v


def validate_envelope(obj):
    """Raises jsonschema.ValidationError when obj is not a valid envelope with valid data."""
    _validator("envelope").validate(obj)
    etype = obj["type"]
    if not obj["dataschema"].endswith("/" + etype + ".json"):
        raise jsonschema.ValidationError(
            "dataschema %r does not name type %r" % (obj["dataschema"], etype))
    if obj["source"] != "qmp-bridge://%s/%s" % (obj["bridge"], obj["subject"]):
        raise jsonschema.ValidationError("source %r does not match bridge/subject" % obj["source"])
    if obj["partitionkey"] != "%s/%s" % (obj["bridge"], obj["subject"]):
        raise jsonschema.ValidationError("partitionkey %r does not match bridge/subject"
                                         % obj["partitionkey"])
    if int(obj["id"].split("-", 1)[1].split(".", 1)[0]) != int(obj["sequence"]):
        raise jsonschema.ValidationError("id %r does not carry sequence %s" % (obj["id"], obj["sequence"]))
    _validator(etype).validate(obj["data"])


def validate_lines(lines, name="<stdin>"):
    """Validates JSON lines; returns (count of valid envelopes, list of failure strings)."""
    ok, failures = 0, []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            validate_envelope(json.loads(line))
            ok += 1
        except (ValueError, KeyError, TypeError, jsonschema.ValidationError) as e:
            msg = e.message if isinstance(e, jsonschema.ValidationError) else str(e)
            where = ""
            if isinstance(e, jsonschema.ValidationError) and e.absolute_path:
                where = " at " + "/".join(str(p) for p in e.absolute_path)
            failures.append("%s:%d: %s%s" % (name, lineno, msg, where))
    return ok, failures
