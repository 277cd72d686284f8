"""Learning-rate schedules with warmup, built from diffusers' implementations (the curves kohya uses).

A schedule multiplies each param group's learning rate by a factor that depends on the step.
Call ``scheduler.step()`` once after each optimizer step; its ``state_dict()`` is what a resume
restores. Adafactor with ``relative_step`` computes its own rate, so it gets transformers'
``AdafactorSchedule``, which only reports that rate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch.optim.lr_scheduler import LRScheduler

from ..fields import described
from .optimizer_packages import import_optional
from .optimizers import effective_learning_rate

log = logging.getLogger(__name__)

SchedulerName = Literal[
    "constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial"
]

SCHEDULER_CHOICES: tuple[str, ...] = (
    "constant",
    "constant_with_warmup",
    "cosine",
    "cosine_with_restarts",
    "linear",
    "polynomial",
)
MIN_LR_SCHEDULERS: tuple[str, ...] = ("cosine", "polynomial")


@dataclass(frozen=True)
class SchedulerConfig:
    """How the learning rate changes over training."""

    name: str = described(
        "Learning-rate schedule. constant: the same rate throughout (warmup ignored). constant_with_warmup:"
        " rises over the warmup, then stays. cosine: rises, then falls along a half cosine to 0 at the end."
        " cosine_with_restarts: the cosine fall repeated num_cycles times. linear: falls in a straight line"
        " to 0. polynomial: falls along (1 - progress)^power.",
        "constant_with_warmup",
    )
    warmup: float = described(
        "Warmup: the rate rises linearly from 0 over the first steps. A number of steps (1 or more), or a"
        " fraction of training below 1 (0.05 = the first 5% of steps; the guides use 5-10%). 0 = none.",
        0.05,
    )
    num_cycles: int = described("cosine_with_restarts only: how many times the cosine falls and restarts.", 1)
    power: float = described(
        "polynomial only: the curve's exponent (1 = a straight line, 2 = falls fast early, 0.5 = late).", 1.0
    )
    min_lr_ratio: float = described(
        "cosine and polynomial only: the rate at the end, as a fraction of the peak (0 = fall to zero).", 0.0
    )

    def __post_init__(self) -> None:
        if self.name not in SCHEDULER_CHOICES:
            raise ValueError(f"scheduler name {self.name!r} is not one of {', '.join(SCHEDULER_CHOICES)}")
        if self.warmup < 0 or (self.warmup >= 1 and self.warmup != int(self.warmup)):
            raise ValueError(
                f"warmup {self.warmup}: give a whole number of steps (1 or more), a fraction of training"
                " between 0 and 1 (0.05 = 5%), or 0 for none"
            )
        if self.num_cycles < 1:
            raise ValueError(f"num_cycles must be 1 or more, got {self.num_cycles}")
        if not self.power > 0:
            raise ValueError(f"power must be positive, got {self.power}")
        if not 0.0 <= self.min_lr_ratio < 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1), got {self.min_lr_ratio}")
        if self.min_lr_ratio > 0 and self.name not in MIN_LR_SCHEDULERS:
            raise ValueError(
                f"min_lr_ratio works with the {' and '.join(MIN_LR_SCHEDULERS)} schedulers only, not {self.name}:"
                " set it to 0 or choose one of those"
            )

    def warmup_steps(self, total_steps: int) -> int:
        """Warmup in steps for a run of ``total_steps``.

        A fraction is rounded and kept at least 1 step and below ``total_steps``, so a short
        test run still reaches the peak rate; an explicit step count must fit in the run.
        """
        if self.name == "constant" or self.warmup == 0:
            return 0
        if self.warmup < 1:
            return min(max(1, round(self.warmup * total_steps)), total_steps - 1)
        steps = int(self.warmup)
        if steps >= total_steps:
            raise ValueError(
                f"warmup of {steps} steps is not shorter than the {total_steps} training steps, so the learning"
                " rate would never reach its peak: lower warmup, or give a fraction such as 0.05"
            )
        return steps


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: SchedulerConfig, total_steps: int
) -> LRScheduler:
    """The schedule ``config`` names over ``total_steps`` optimizer steps, applied to every param group.

    The rate of optimizer step ``k`` (counting from 0) is the peak times the curve at ``k``:
    with warmup ``w``, step 0 trains at 0 and step ``w`` at the peak, as in diffusers and kohya.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be 1 or more, got {total_steps}")
    if _sets_own_learning_rate(optimizer):
        return _adafactor_schedule(optimizer, config)
    warmup_steps = config.warmup_steps(total_steps)
    optimization = import_optional(
        "diffusers.optimization", "pip install diffusers", "the learning-rate scheduler"
    )
    scheduler: LRScheduler
    if config.name == "polynomial":
        peak = float(optimizer.defaults["lr"])
        scheduler = optimization.get_polynomial_decay_schedule_with_warmup(
            optimizer,
            num_warmup_steps=warmup_steps,
            num_training_steps=total_steps,
            lr_end=config.min_lr_ratio * peak,
            power=config.power,
        )
    elif config.name == "cosine" and config.min_lr_ratio > 0:
        # diffusers' cosine always ends at 0; transformers' variant (the one kohya uses) keeps a floor.
        transformers_optimization = import_optional(
            "transformers.optimization", "pip install transformers", "cosine with min_lr_ratio"
        )
        scheduler = transformers_optimization.get_cosine_with_min_lr_schedule_with_warmup(
            optimizer,
            num_warmup_steps=warmup_steps,
            num_training_steps=total_steps,
            min_lr_rate=config.min_lr_ratio,
        )
    else:
        scheduler = optimization.get_scheduler(
            config.name,
            optimizer,
            num_warmup_steps=warmup_steps,
            num_training_steps=total_steps,
            num_cycles=config.num_cycles,
            power=config.power,
        )
    return scheduler


def _sets_own_learning_rate(optimizer: torch.optim.Optimizer) -> bool:
    return any(group.get("relative_step", False) for group in optimizer.param_groups)


def _adafactor_schedule(optimizer: torch.optim.Optimizer, config: SchedulerConfig) -> LRScheduler:
    if config.name != "constant" or config.warmup != 0:
        log.info(
            "Adafactor with relative_step sets its own learning rate: scheduler %s and warmup %g are not used"
            " (Adafactor's warmup_init is its own warmup)",
            config.name,
            config.warmup,
        )
    optimization = import_optional(
        "transformers.optimization", "pip install transformers", "the Adafactor schedule"
    )
    schedule: LRScheduler = optimization.AdafactorSchedule(
        optimizer, initial_lr=effective_learning_rate(optimizer)
    )
    return schedule
