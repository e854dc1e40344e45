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
