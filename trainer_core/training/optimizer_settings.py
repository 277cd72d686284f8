"""Optimizer settings chosen apart from the optimizer: which of them each optimizer uses.

The canvas picks the optimizer on Train LoRA and its finer settings on a separate node, so one set of
settings can be switched between optimizers. ``for_optimizer`` keeps the settings the chosen optimizer
uses and puts the rest back to their defaults: a Prodigy-only ``d_coef`` or an Adafactor-only
``relative_step`` left on must not change how AdamW trains (``relative_step`` would otherwise drop the
learning rate).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from .optimizers import OPTIMIZER_CHOICES, OptimizerConfig

log = logging.getLogger(__name__)

_ADAM_FAMILY = ("AdamW", "AdamW8bit", "PagedAdamW8bit")

# Which optimizers read each setting (what ``build_optimizer`` passes to each of them).
USED_BY: dict[str, tuple[str, ...]] = {
    "weight_decay": OPTIMIZER_CHOICES,
    "betas": (*_ADAM_FAMILY, "Lion8bit", "Prodigy", "Lion"),
    "eps": (*_ADAM_FAMILY, "Prodigy"),
    "momentum": ("SGD",),
    "d_coef": ("Prodigy",),
    "safeguard_warmup": ("Prodigy",),
    "use_bias_correction": ("Prodigy",),
    "decouple": ("Prodigy",),
    "relative_step": ("Adafactor",),
    "scale_parameter": ("Adafactor",),
    "warmup_init": ("Adafactor",),
}


def used_by_text(name: str) -> str:
    """A tooltip suffix saying which optimizers use setting ``name`` and that the others ignore it."""
    users = USED_BY[name]
    if users == OPTIMIZER_CHOICES:
        return "Used by every optimizer."
    return f"Used by {', '.join(users)}; ignored when Train LoRA's optimizer is another one."


def for_optimizer(
    settings: OptimizerConfig | None, name: str, allow_8bit_fallback: bool = False
) -> OptimizerConfig:
    """The config of optimizer ``name``: the settings it uses from ``settings``, the others at their defaults.

    ``settings.name``, ``learning_rate`` and ``allow_8bit_fallback`` are not read: the optimizer's name and
    fallback come from the arguments, the learning rate from the training config.
    """
    if settings is None:
        return OptimizerConfig(name=name, allow_8bit_fallback=allow_8bit_fallback)
    defaults = OptimizerConfig()
    kept: dict[str, Any] = {}
    ignored: list[str] = []
    for setting, users in USED_BY.items():
        value = getattr(settings, setting)
        if name in users:
            kept[setting] = value
        elif value != getattr(defaults, setting):
            ignored.append(f"{setting}={value}")
    if ignored:
        log.info("optimizer settings that %s does not use were ignored: %s", name, ", ".join(ignored))
    return dataclasses.replace(defaults, name=name, allow_8bit_fallback=allow_8bit_fallback, **kept)


def parse_betas(text: str) -> tuple[float, float] | None:
    """``"0.9, 0.99"`` → (0.9, 0.99); empty → None (the optimizer's own)."""
    text = text.strip().strip("()[]")
    if not text:
        return None
    parts = [part for part in text.replace(",", " ").split() if part]
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) != 2:
        raise ValueError(
            f"betas must be two numbers such as '0.9, 0.999', or empty for the optimizer's own; got {text!r}"
        )
    return (values[0], values[1])
