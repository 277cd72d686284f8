"""Figures the reliability tests measure, printed at the end of every pytest run that ran them (no ``-s``
needed): each test adds lines under a heading through the ``figures`` fixture, and
``pytest_terminal_summary`` prints them in the order the tests ran. With ``LORA_LAB_FIGURES_FILE`` set, each
line is also appended to that file the moment it is recorded (for a run stopped before its summary)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

_RECORDED: dict[str, list[str]] = {}


@pytest.fixture
def figures() -> Callable[[str, str], None]:
    """``figures(heading, line)``: keep ``line`` for the summary under ``heading``."""

    def record(heading: str, line: str) -> None:
        _RECORDED.setdefault(heading, []).append(line)
        if os.environ.get("LORA_LAB_FIGURES_FILE"):
            with open(os.environ["LORA_LAB_FIGURES_FILE"], "a", encoding="utf-8") as file:
                file.write(f"{heading}: {line}\n")

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _RECORDED:
        return
    terminalreporter.section("LoRA Lab reliability figures")
    for heading, lines in _RECORDED.items():
        terminalreporter.write_line(f"{heading}:")
        for line in lines:
            terminalreporter.write_line(f"  {line}")
