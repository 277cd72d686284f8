"""Validation: the loss on held-out images, measured the same way every time, so its curve is deterministic.

Held-out images (a share of the dataset or a dataset of their own: ``trainer_core.data.validation_split``)
are encoded once, like the training images. At each validation every held-out image is noised at
``VALIDATION_LEVELS`` fixed noise levels spread over the model's schedule (kohya's validation takes 4
evenly spaced timesteps), with noise from a generator seeded afresh each time from the run's seed; it
never draws from the training streams (captions, noise, dropout) and the global random state is put
back after. Evaluation runs under ``no_grad`` with the adapters' dropout off, on the weights a checkpoint
saves (the moving average when EMA is on). The loss is the training loss (prediction space, min-SNR,
loss type) averaged over images and levels; noise offset and multires noise are left out: they are
training augmentations (``validation_loss`` measures it).

When: every ``every`` steps, at every checkpoint step and at the last step (which is then saved as a
checkpoint too), so each checkpoint has a validation loss and the best checkpoint (the lowest) is
always a file on disk.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..fields import described
from ..models.protocols import LatentCodec, TextEmbedding
from .checkpoints import CheckpointPolicy
from .encoding import encode_latents
from .epochs import CaptionFunction, TrainingData
from .first_frame import encode_first_frames

if TYPE_CHECKING:
    from .run import TrainingRun

VALIDATION_LEVELS = 4  # fixed noise levels per held-out image, evenly spaced over the schedule (kohya's 4)


@dataclass(frozen=True)
class ValidationConfig:
    """How held-out images are set aside and how often their loss is measured."""

    share: float = described(
        "Share of the dataset's images held out for validation (0 = off; e.g. 0.1). They are chosen by the seed,"
        " never trained on, and their loss is measured at fixed noise, so the curve is deterministic. At least"
        " one image is held out when above 0 (0.1 of 3 images holds out 1); at least one must be left to train"
        " on. Or connect a second Load Dataset to Train LoRA's validation_images instead (then leave this at 0).",
        0.0,
    )
    every: int = described(
        "With validation on: measure the held-out loss every N steps; also at every checkpoint step (save_every)"
        " and at the last step, which is then saved as a checkpoint too, so the best checkpoint is a file."
        " 0 = only at checkpoint steps and the last step.",
        50,
    )

    def __post_init__(self) -> None:
        if not 0 <= self.share < 1:
            raise ValueError(f"validation_share must be from 0 (off) to below 1, e.g. 0.1; got {self.share!r}")
        if not isinstance(self.every, int) or self.every < 0:
            raise ValueError(f"validate_every must be a whole number of 0 or more, got {self.every!r}")


@dataclass
class HeldOut:
    """The held-out images as validation reads them: latents and fixed captions, encoded once."""

    latents: list[torch.Tensor]
    captions: list[str]
    config: ValidationConfig
    first_frames: list[TextEmbedding] | None = None  # image-to-video models: each item's own (first_frame.py)


def encode_held_out(
    data: TrainingData, codec: LatentCodec, caption: CaptionFunction, config: ValidationConfig
) -> HeldOut | None:
    """Latents and fixed captions (no random processing) of ``data``; None when it has no image."""
    if not data.items:
        return None
    return HeldOut(encode_latents(data, codec), [caption(item, None) for item in data.items], config,
                   encode_first_frames(data, codec))


def fixed_levels(schedule: torch.Tensor, count: int = VALIDATION_LEVELS) -> torch.Tensor:
    """``count`` noise levels of the schedule, evenly spaced by position, both ends left out."""
    levels = schedule.detach().float().cpu()
    positions = torch.linspace(0, levels.shape[0] - 1, count + 2)[1:-1].round().long()
    return levels[positions]


def validation_due(run: TrainingRun, checkpoints: CheckpointPolicy | None) -> bool:
    """Whether the step just finished is validated: every ``every`` steps, at checkpoints, at the end."""
    if run.validation is None:
        return False
    every = run.validation.config.every
    at_checkpoint = checkpoints is not None and checkpoints.every > 0 and run.step % checkpoints.every == 0
    return (every > 0 and run.step % every == 0) or at_checkpoint or run.step == run.total_steps


def record_checkpoint(run: TrainingRun, step: int) -> dict[str, str]:
    """Note that the checkpoint of ``step`` was saved; its metadata keys for the validation loss."""
    if step not in run.validation_losses:
        return {}
    run.validated_checkpoints[step] = run.validation_losses[step]
    return {"ss_validation_loss": f"{run.validation_losses[step]:.6f}"}


def best_checkpoint(run: TrainingRun, policy: CheckpointPolicy | None, on_disk: bool = False) -> tuple[int, Path] | None:
    """(step, file) of the checkpoint with the lowest validation loss (the earliest on a tie); with ``on_disk``
    only among files still there. None without validated checkpoints."""
    if policy is None:
        return None
    candidates = [(loss, step) for step, loss in run.validated_checkpoints.items()
                  if not on_disk or policy.lora_path(step).is_file()]
    if not candidates:
        return None
    _, step = min(candidates)
    return step, policy.lora_path(step)


def checkpoints_to_prune(saved: Sequence[Path], keep_last: int, protected: Path | None) -> list[Path]:
    """The checkpoints of ``saved`` (oldest first) before the last ``keep_last``, except ``protected`` (the best)."""
    return [path for path in saved[: max(0, len(saved) - keep_last)] if path != protected]


def validation_metadata(config: ValidationConfig, seed: int, losses: dict[int, float],
                        best: tuple[int, Path] | None, name_of: Callable[[Path], str]) -> dict[str, str]:
    """Metadata for the trained LoRA: kohya's validation keys, its own validation loss (the last step's), the
    curve, and the best checkpoint's file as ``name_of`` names it. Empty without validation."""
    if not losses:
        return {}
    last = max(losses)
    values = {
        "ss_validation_split": str(config.share),
        "ss_validate_every_n_steps": str(config.every),
        "ss_validation_seed": str(seed),
        "ss_validation_loss": f"{losses[last]:.6f}",
        "lora_lab_validation_losses": json.dumps({str(step): round(loss, 6) for step, loss in sorted(losses.items())}),
    }
    if best is not None:
        values.update(lora_lab_best_checkpoint=name_of(best[1]), lora_lab_best_checkpoint_step=str(best[0]),
                      lora_lab_best_validation_loss=f"{losses[best[0]]:.6f}")
    return values
