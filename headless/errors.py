"""The runner's own error: something in the command, the workflow or the machine a person must fix."""

from __future__ import annotations


class HeadlessError(Exception):
    """Printed as it is (no traceback) and the command exits with status 2."""
