"""Train LoRA's validation glue: which images are held out, and what the run says about them afterwards
(the file's metadata and the ``report`` output). What is measured lives in the core:
``trainer_core/data/validation_split.py`` and ``trainer_core/training/validation.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import folder_paths
from comfy_api.latest import io

from ..trainer_core.data.validation_split import ValidationSplit, split_for_validation
from ..trainer_core.training.report import diagnose_run, run_report
from ..trainer_core.training.results import TrainingResult
from ..trainer_core.training.validation import ValidationConfig, validation_metadata
from .types import Dataset


def validation_images_input() -> io.Input:
    """Train LoRA's last input: a second dataset of held-out images."""
    return Dataset.Input(
        "validation_images", optional=True,
        tooltip="Optional held-out images from a second Load Dataset, never trained on: their loss is measured at "
        "fixed noise every validate_every steps (LoRA Lab Samples and Checkpoints), at each checkpoint and at the "
        "end, drawn on the loss curve, and the report names the checkpoint where it was lowest. Captions get "
        "the training dataset's trigger word. Or hold out a share of the dataset with validation_share.",
    )


def report_output() -> io.Output:
    """Train LoRA's last output: the run in words."""
    return io.String.Output(
        "report", display_name="report",
        tooltip="The run in a few lines: steps, final loss, validation losses, the best checkpoint's file "
        "name as LoraLoader lists it, and the loss diagnosis (the curve's shape with its rule and numbers, and "
        "what to do).",
    )


def validation_config(settings: dict[str, Any]) -> ValidationConfig:
    return ValidationConfig(share=settings["validation_share"], every=settings["validate_every"])


def held_out_split(dataset, validation_images, config: ValidationConfig, seed: int) -> ValidationSplit:
    """The images to train on and those held out (a share of ``dataset``, or ``validation_images``)."""
    split = split_for_validation(dataset, config.share, seed, validation_images)
    if split.note:
        print(f"[LoRA Lab] TrainLoRA: {split.note}", flush=True)
    return split


def checkpoint_name(path: Path) -> str:
    """A checkpoint's name as LoraLoader lists it: relative to the loras folder it was saved in."""
    return os.path.relpath(path, folder_paths.get_folder_paths("loras")[0])


def validation_curve(result: TrainingResult) -> dict[str, Any]:
    """The loss curve's validation arguments (the held-out losses and the best checkpoint's step) and the loss
    diagnosis's verdicts, written under the plot."""
    best = result.best_checkpoint
    return {"validation": result.validation_losses, "best_step": best[0] if best else None,
            "verdicts": diagnose_run(result, checkpoint_name)}


def finish_report(weights, result: TrainingResult, config: ValidationConfig, seed: int,
                  split: ValidationSplit) -> str:
    """Add the validation keys to the LoRA's metadata; return the ``report`` text."""
    weights.metadata.update(validation_metadata(config, seed, result.validation_losses, result.best_checkpoint,
                                                checkpoint_name))
    if split.held_out is not None:
        weights.metadata["lora_lab_validation_images"] = json.dumps(
            [item.image_path.name for item in split.held_out.items], ensure_ascii=False)
    return run_report(result, checkpoint_name, notes=[split.note])
