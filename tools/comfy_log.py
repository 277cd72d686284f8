"""What a ComfyUI server wrote to its log: reading it from a mark, and finding what it logged about
one custom node pack failing to import or register."""

from __future__ import annotations

import re
from pathlib import Path


def read_log(path: Path, since: int = 0) -> str:
    """The log's text from byte offset ``since`` ("" before the server wrote one)."""
    if not path.exists():
        return ""
    with open(path, "rb") as handle:
        handle.seek(since)
        return handle.read().decode("utf-8", errors="replace")


def log_end(path: Path) -> int:
    """The log's current size in bytes: a mark to read only what comes after it."""
    return path.stat().st_size if path.exists() else 0


def pack_import_problems(log_text: str, pack_path: str) -> str:
    """The lines that name the pack at ``pack_path``, with the whole traceback of an import error
    (ComfyUI logs "Cannot import <path>" after it) and without the import-timing lines."""
    lines = log_text.splitlines()
    found: list[str] = []
    traceback_start = None
    for index, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            traceback_start = index
        is_timing = re.match(r"\s*[\d.]+ seconds: ", line) is not None and "IMPORT FAILED" not in line
        in_traceback = line.startswith("  File ")  # shown with its whole traceback below
        if pack_path in line and not is_timing and not in_traceback:
            if line.startswith("Cannot import") and traceback_start is not None:
                found.extend(lines[traceback_start : index + 1])
            else:
                found.append(line)
    return "\n".join(found)
