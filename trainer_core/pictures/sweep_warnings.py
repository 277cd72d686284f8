"""Warnings where users of a sweep go wrong (#15 item 5), from the guides' "Finding the right strength":
prompts without the LoRA's trigger word, a stack in which one LoRA overrides the others, and prompts
encoded at another clip skip than the LoRA was trained with. Each warning says what was seen and the fix,
for a person at the canvas. Pure functions of the LoRA's ``ss_*`` metadata, the prompts and the cells."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

SAME_CELL_LEVELS = 1.0  # two cells are "the same picture" within this mean difference, in 0-255 levels


def trigger_word_warning(prompts: Sequence[str], metadata: Mapping[str, str]) -> str | None:
    """A warning when the LoRA has a trigger word (``trigger_word``) and no prompt contains it."""
    trigger = trigger_word(metadata)
    if not trigger or any(trigger.lower() in prompt.lower() for prompt in prompts):
        return None
    write = f"{{trigger}} (or '{trigger}')" if metadata.get("ss_trigger_word") else f"'{trigger}'"
    return (f"Warning: no prompt contains the LoRA's trigger word '{trigger}' — results look like the base model? "
            f"Check your trigger word: write {write} in the prompts.")


def trigger_word(metadata: Mapping[str, str]) -> str:
    """The LoRA's trigger word: ``ss_trigger_word`` (LoRA Lab writes it), else, for LoRAs trained elsewhere,
    the most frequent tag that every training caption had (kohya's ``ss_tag_frequency`` against the image
    counts in ``ss_dataset_dirs``); "" when neither says."""
    written = str(metadata.get("ss_trigger_word", "") or "").strip()
    if written:
        return written
    try:
        frequencies = json.loads(metadata.get("ss_tag_frequency", "") or "{}")
        folders = json.loads(metadata.get("ss_dataset_dirs", "") or "{}")
        counts = {folder: int(folders[folder]["img_count"]) for folder in frequencies}
    except (ValueError, TypeError, KeyError):
        return ""
    if not frequencies:
        return ""
    totals: dict[str, int] = {}
    for folder, tags in frequencies.items():
        for tag, count in tags.items():
            if int(count) >= counts[folder] > 0:
                totals[tag] = totals.get(tag, 0) + int(count)
    everywhere = [tag for tag in totals if all(int(tags.get(tag, 0)) >= counts[folder] > 0
                                               for folder, tags in frequencies.items())]
    return max(everywhere, key=lambda tag: (totals[tag], tag), default="")


def clip_skip_warning(metadata: Mapping[str, str], sweep_clip_skip: int) -> str | None:
    """A warning when the LoRA was trained at another clip skip (``ss_clip_skip``) than the one the sweep's
    CLIP encodes prompts at. SDXL LoRAs are left alone: kohya writes a clip skip it does not apply to SDXL."""
    trained = str(metadata.get("ss_clip_skip", "") or "").strip()
    if not trained.isdigit() or str(metadata.get("ss_base_model_version", "")).startswith("sdxl"):
        return None
    if int(trained) == sweep_clip_skip:
        return None
    return (f"Warning: the LoRA was trained with clip skip {trained} (ss_clip_skip), but the CLIP connected here "
            f"encodes prompts at clip skip {sweep_clip_skip}: the cells do not show what training taught. Connect "
            f"the CLIP through a CLIPSetLastLayer node with stop_at_clip_layer = -{trained}.")


def stack_override_warnings(rows: Sequence[Sequence[np.ndarray]], prompts: Sequence[str], base_column: int,
                            stack_column: int, single_columns: Mapping[str, int]) -> list[str]:
    """One warning per prompt whose stacked cell is the same picture (within ``SAME_CELL_LEVELS``) as one
    LoRA's cell alone (``single_columns``: LoRA name -> column), when that LoRA changes the base picture: the
    others add nothing on top of it. ``rows[prompt][column]``: RGB cells in 0..1."""
    warnings = []
    for prompt, row in zip(prompts, rows, strict=True):
        stack = np.asarray(row[stack_column], dtype=np.float64)
        for name, column in single_columns.items():
            alone = np.asarray(row[column], dtype=np.float64)
            difference = float(np.abs(stack - alone).mean() * 255)
            changes_base = float(np.abs(alone - np.asarray(row[base_column], dtype=np.float64)).mean() * 255)
            if difference <= SAME_CELL_LEVELS < changes_base:
                others = ", ".join(other for other in single_columns if other != name)
                warnings.append(
                    f"Warning: for '{prompt}' the stack is the same picture as {name} alone (mean difference "
                    f"{difference:.2f} levels of 255; rule: <= {SAME_CELL_LEVELS:g}): {name} overrides {others}. "
                    f"Lower {name}'s strength in stack_strengths, or raise the others'.")
                break
    return warnings
