"""The sweep nodes' warnings (``trainer_core/pictures/sweep_warnings.py``): each goes into the node's
``report`` output as its own line and to the console."""

from __future__ import annotations

from collections.abc import Sequence

from ..trainer_core.pictures.sweep_warnings import (
    clip_skip_warning,
    stack_override_warnings,
    trigger_word_warning,
)
from . import bridge


def lora_warnings(node: str, metadata: dict, prompts: Sequence[str], clip) -> list[str]:
    """Before rendering: prompts without the trigger word; a CLIP at another clip skip than training's."""
    return announced(node, [trigger_word_warning(prompts, metadata),
                            clip_skip_warning(metadata, bridge.effective_clip_skip(clip, 1))])


def stack_warnings(node: str, rows, prompts: Sequence[str], labels: Sequence[str], names: Sequence[str]) -> list[str]:
    """After rendering a stack comparison (columns: base, each LoRA alone in ``names`` order, the stack last):
    a stack that is the same picture as one LoRA alone."""
    if len(labels) < len(names) + 2:  # no stack column: one LoRA only
        return []
    singles = {name: column for column, name in enumerate(names, start=1)}
    return announced(node, stack_override_warnings(rows, prompts, 0, len(labels) - 1, singles))


def announced(node: str, warnings: Sequence[str | None]) -> list[str]:
    kept = [warning for warning in warnings if warning]
    for warning in kept:
        print(f"[LoRA Lab] {node}: {warning}", flush=True)
    return kept
