"""Figures the reliability tests measure, printed at the end of every pytest run that ran them (no ``-s``
needed): each test adds lines under a heading through the ``figures`` fixture, and
``pytest_terminal_summary`` prints them in the order the tests ran."""

from __future__ import annotations

from collections.abc import Callable

import pytest

_RECORDED: dict[str, list[str]] = {}


@pytest.fixture
def figures() -> Callable[[str, str], None]:
    """``figures(heading, line)``: keep ``line`` for the summary under ``heading``."""

    def record(heading: str, line: str) -> None:
        _RECORDED.setdefault(heading, []).append(line)

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _RECORDED:
        return
    terminalreporter.section("LoRA Lab reliability figures")
    for heading, lines in _RECORDED.items():
        terminalreporter.write_line(f"{heading}:")
        for line in lines:
            terminalreporter.write_line(f"  {line}")
