"""How the process that runs Train LoRA was started: by ComfyUI (one process, the default) or by the
headless runner (``headless/train.py``), maybe as one of several processes under ``accelerate launch``.

The runner sets the context around the nodes it runs; Train LoRA reads it, so the canvas and the runner
train through the same node code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunContext:
    parallel: Any = None  # the data-parallel handle ``train_lora`` takes; None = this process trains alone
    is_main_process: bool = True  # only the main process writes the log and shows console progress


_current = RunContext()


def current_run_context() -> RunContext:
    return _current


@contextlib.contextmanager
def run_context(context: RunContext) -> Iterator[RunContext]:
    global _current
    previous, _current = _current, context
    try:
        yield context
    finally:
        _current = previous
