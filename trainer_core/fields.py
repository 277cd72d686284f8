"""Settings fields that carry their own help text.

Every config dataclass in the core declares its fields with ``described(help, default)``; the nodes read
the text back with ``help_text`` as the tooltip, and the default with ``default_of``, so the canvas and
the headless runner describe and default a setting the same way. Used by every room; uses none.
"""

from __future__ import annotations

from dataclasses import field, fields
from typing import Any


def described(text: str, default: Any) -> Any:
    """A dataclass field with ``default`` whose help text is ``text``."""
    return field(default=default, metadata={"help": text})


def help_text(config_class: type, name: str) -> str:
    """The help text of one field, for tooltips."""
    for f in fields(config_class):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(f"{config_class.__name__} has no field {name!r}")


def default_of(config_class: type, name: str) -> Any:
    """The default of one field, for widgets."""
    for f in fields(config_class):
        if f.name == name:
            return f.default
    raise KeyError(f"{config_class.__name__} has no field {name!r}")
