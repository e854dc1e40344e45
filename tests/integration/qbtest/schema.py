"""schema.py - the one entry to tests/tools/qbschema.py (the schema/v1 validator) for the harness."""
import os
import sys

from . import util

_validate = None


def validate_envelope(obj):
    """qbschema.validate_envelope, imported on first use from tests/tools; raises on an invalid envelope."""
    global _validate
    if _validate is None:
        tools = os.path.join(util.SOURCE_DIR, "tests", "tools")
        if tools not in sys.path:
            sys.path.insert(0, tools)
        import qbschema  # noqa: E402 - lives in tests/tools
        _validate = qbschema.validate_envelope
    _validate(obj)


def invalid_envelopes(envelopes):
    """One line per envelope of the iterable that schema/v1 refuses: subject, sequence, type,
    time and the validator's first line. Empty when every envelope is valid."""
    bad = []
    for e in envelopes:
        try:
            validate_envelope(e)
        except Exception as ex:  # jsonschema.ValidationError, imported lazily above
            bad.append("%s seq %s %s time %s: %s" % (e.get("subject"), e.get("sequence"), e.get("type"),
                                                     e.get("time"), str(ex).splitlines()[0]))
    return bad
