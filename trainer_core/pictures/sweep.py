"""What a strength sweep renders: parsing the user's strengths and prompts, and the size check.

The rendering itself goes through ComfyUI's own LoRA loader and sampler (``nodes/strength_sweep.py``);
this module only plans it, so the plan is testable without ComfyUI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_STRENGTHS = "0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0"
MAX_STRENGTH = 5.0
MAX_CELLS = 400
# The grid and the single images are held as float32 RGB; refuse what would not fit comfortably.
MAX_GRID_BYTES = 2 * 2**30


class SweepError(ValueError):
    """A sweep setting the user must change (the message names the field)."""


def parse_strengths(text: str, include_baseline: bool, field: str = "strengths") -> list[float]:
    """'0.4, 0.5 1.0' → [0.0, 0.4, 0.5, 1.0] (with the baseline); keeps the user's order, drops repeats.
    ``field`` is the input the messages name."""
    values: list[float] = []
    for token in re.split(r"[,;\s]+", text.strip()):
        if not token:
            continue
        try:
            value = float(token)
        except ValueError:
            raise SweepError(f"{field}: {token!r} is not a number. Write numbers separated by commas, e.g. {DEFAULT_STRENGTHS}") from None
        if value != value or abs(value) > MAX_STRENGTH:
            raise SweepError(f"{field}: {token} is out of range; use values from -{MAX_STRENGTH} to {MAX_STRENGTH}")
        values.append(round(value, 4))
    if include_baseline:
        values.insert(0, 0.0)
    unique = list(dict.fromkeys(values))
    if not unique:
        raise SweepError(f"{field}: give at least one strength, e.g. {DEFAULT_STRENGTHS}")
    return unique


def parse_prompts(text: str, trigger_word: str) -> list[str]:
    """One prompt per non-empty line, ``{trigger}`` replaced by the LoRA's trigger word."""
    prompts = [line.strip().replace("{trigger}", trigger_word).strip(" ,") for line in text.splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise SweepError("prompts: write at least one prompt, one per line (use {trigger} for the trigger word)")
    return prompts


@dataclass(frozen=True)
class GridPlan:
    prompts: tuple[str, ...]
    strengths: tuple[float, ...]
    width: int
    height: int

    @property
    def cells(self) -> int:
        return len(self.prompts) * len(self.strengths)

    def estimated_bytes(self) -> int:
        """Single images + the grid (with labels), float32 RGB."""
        image = self.width * self.height * 3 * 4
        return int(self.cells * image * 2.2)


def plan_grid(prompts: list[str], strengths: list[float], width: int, height: int) -> GridPlan:
    plan = GridPlan(tuple(prompts), tuple(strengths), width, height)
    if plan.cells > MAX_CELLS:
        raise SweepError(
            f"the grid would have {plan.cells} cells ({len(prompts)} prompts x {len(strengths)} strengths); "
            f"the limit is {MAX_CELLS}. Use fewer prompts or strengths."
        )
    if plan.estimated_bytes() > MAX_GRID_BYTES:
        raise SweepError(
            f"the grid would need about {plan.estimated_bytes() / 2**30:.1f} GiB of memory "
            f"({plan.cells} cells of {width}x{height}); the limit is {MAX_GRID_BYTES / 2**30:.0f} GiB. "
            "Use a smaller width/height or fewer prompts or strengths."
        )
    return plan


def strength_label(value: float) -> str:
    text = f"{value:.1f}" if value == round(value, 1) else f"{value:g}"
    return f"{text} (base)" if value == 0 else text


GUIDE_STACK_STRENGTHS = "0.7, 0.5, 0.35"


def parse_lora_lines(text: str, default_strength: float = 1.0) -> list[tuple[str, float]]:
    """'style.safetensors: 0.6' per line → [(name, strength)]; a line without ':' uses the default."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, value = line.rsplit(":", 1) if ":" in line else (line, "")
        name, value = name.strip(), value.strip()
        try:
            strength = float(value) if value else default_strength
        except ValueError:
            raise SweepError(f"other_loras line {number}: {value!r} is not a strength; write 'name: 0.6'") from None
        if not abs(strength) <= MAX_STRENGTH:  # NaN too
            raise SweepError(f"other_loras line {number}: strength {strength} is out of range (-5 to 5)")
        entries.append((name, strength))
    return entries


def stack_strengths(text: str, count: int) -> list[float]:
    """The strengths of each LoRA inside the stack, in order; the last value repeats for more LoRAs.

    The guides' default reduces each: first 0.6-0.8, second 0.4-0.6, third 0.3-0.4."""
    values = parse_strengths(text if text.strip() else GUIDE_STACK_STRENGTHS, False, field="stack_strengths")
    return [values[min(i, len(values) - 1)] for i in range(count)]
