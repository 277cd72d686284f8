"""kohya-style ``ss_*`` metadata for a trained LoRA (what A1111/Forge's LoRA info panels read).

What grows with the dataset is bounded, so a huge dataset cannot make a huge file header: the tag frequencies
and the dataset folders keep their largest entries within ``DATASET_JSON_LIMIT`` bytes each, the loss history
at most ``LOSS_POINTS`` points."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

from ..adapters.adapter_types import network_metadata
from ..adapters.config import LoRAConfig
from .config import TrainingConfig

DATASET_JSON_LIMIT = 64 * 1024  # bytes of ss_tag_frequency, and of ss_dataset_dirs
LOSS_POINTS = 2000
_Item = TypeVar("_Item")


def training_metadata(
    lora: LoRAConfig,
    training: TrainingConfig,
    *,
    steps: int,
    total_steps: int,
    num_images: int,
    samples_per_epoch: int,
    resolution: int,
    trigger_word: str,
    tag_frequency: dict[str, dict[str, int]],
    dataset_dirs: dict[str, dict[str, Any]],
    base_model_version: str,
    base_model_hash: str,
    started_at: float,
    finished_at: float,
    mixed_precision: str,
    output_name: str = "",
    losses: list[float] | None = None,
    optimizer: str = "AdamW",
    scheduler: str = "constant",
    warmup_steps: int = 0,
    clip_skip: int | None = None,
    processes: int = 1,
) -> dict[str, str]:
    """All values as strings, as safetensors metadata requires.

    ``clip_skip`` is the one captions were really encoded with, when the front end knows better than
    ``training.clip_skip`` (a CLIP connected through CLIPSetLastLayer). ``processes``: how many data
    parallel processes trained, each on ``training.batch_size`` images per batch (kohya's per device)."""
    values: dict[str, Any] = {
        **network_metadata(lora, base_model_version),
        "ss_network_dim": lora.rank,
        "ss_network_alpha": lora.alpha,
        "ss_network_dropout": lora.dropout,
        "ss_learning_rate": training.learning_rate,
        "ss_unet_lr": training.learning_rate,
        "ss_text_encoder_lr": training.text_encoder_lr,
        "ss_network_train_unet_only": training.text_encoder_lr == 0,
        "ss_network_train_text_encoder_only": False,
        "ss_clip_skip": clip_skip if clip_skip is not None else training.clip_skip,
        "ss_optimizer": f"{optimizer}(weight_decay={training.weight_decay})",
        "ss_lr_scheduler": scheduler,
        "ss_lr_warmup_steps": warmup_steps,
        "ss_max_train_steps": total_steps,
        "ss_steps": steps,
        **_batch_metadata(training, steps, samples_per_epoch, processes),
        "ss_gradient_checkpointing": training.gradient_checkpointing,
        "ss_mixed_precision": mixed_precision,
        "ss_min_snr_gamma": training.min_snr_gamma,
        "ss_noise_offset": training.noise_offset,
        "ss_max_grad_norm": training.max_grad_norm,
        "ss_masked_loss": training.masked_loss,
        "ss_seed": training.seed,
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_trigger_word": trigger_word,
        "ss_tag_frequency": bounded_tag_frequency(tag_frequency),
        "ss_dataset_dirs": bounded_dataset_dirs(dataset_dirs),
        "ss_base_model_version": base_model_version,
        "ss_sd_model_hash": base_model_hash[:8],
        "ss_new_sd_model_hash": base_model_hash,
        "ss_training_started_at": started_at,
        "ss_training_finished_at": finished_at,
        "ss_training_time_seconds": round(finished_at - started_at, 2),
        "ss_v2": False,
        "ss_output_name": output_name,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{base_model_version}/lora",  # kohya writes /lora for LyCORIS networks too
        "modelspec.implementation": "https://github.com/kohya-ss/sd-scripts",
        "modelspec.trigger_phrase": trigger_word,
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(finished_at)),
        "lora_lab_num_images": num_images,
        "lora_lab_losses": json.dumps(_downsample([round(x, 6) for x in losses or []], LOSS_POINTS)),
        "lora_lab_config": json.dumps({"lora": asdict(lora), "training": asdict(training)}),
    }
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in values.items()}


def _batch_metadata(training: TrainingConfig, steps: int, samples_per_epoch: int, processes: int) -> dict[str, Any]:
    """kohya's batch and epoch keys; one batch is ``training.batch_size`` images on each of ``processes``."""
    global_batch = training.batch_size * processes
    return {
        "ss_epoch": int(steps * global_batch * training.gradient_accumulation / max(1, samples_per_epoch)),
        "ss_num_train_images": samples_per_epoch,
        "ss_num_batches_per_epoch": -(-samples_per_epoch // global_batch),
        "ss_batch_size_per_device": training.batch_size,
        "ss_total_batch_size": global_batch * training.gradient_accumulation,
        "ss_gradient_accumulation_steps": training.gradient_accumulation,
    }


def bounded_tag_frequency(tag_frequency: dict[str, dict[str, int]], limit: int = DATASET_JSON_LIMIT) -> str:
    """kohya's ``ss_tag_frequency`` JSON in at most ``limit`` bytes: the most frequent tags of all folders (ties
    in folder order); all of them, as they are, when they fit, as for any dataset whose captions are tags."""
    whole = json.dumps(tag_frequency, ensure_ascii=False)
    if len(whole.encode()) <= limit:
        return whole
    entries = sorted(((folder, tag, count) for folder, tags in tag_frequency.items() for tag, count in tags.items()),
                     key=lambda entry: -entry[2])

    def build(kept: list[tuple[str, str, int]]) -> dict[str, dict[str, int]]:
        folders: dict[str, dict[str, int]] = {}
        for folder, tag, count in kept:
            folders.setdefault(folder, {})[tag] = count
        return folders

    return _largest_fitting(entries, build, limit)


def bounded_dataset_dirs(dataset_dirs: dict[str, dict[str, Any]], limit: int = DATASET_JSON_LIMIT) -> str:
    """kohya's ``ss_dataset_dirs`` JSON in at most ``limit`` bytes: all folders as they are when they fit, else the
    folders with the most images."""
    whole = json.dumps(dataset_dirs, ensure_ascii=False)
    if len(whole.encode()) <= limit:
        return whole
    entries = sorted(dataset_dirs.items(), key=lambda entry: -int(entry[1].get("img_count", 0)))
    return _largest_fitting(entries, dict, limit)


def _largest_fitting(entries: list[_Item], build: Callable[[list[_Item]], Any], limit: int) -> str:
    """The JSON of ``build(entries[:n])`` for the largest ``n`` whose JSON fits in ``limit`` bytes."""

    def size(count: int) -> int:
        return len(json.dumps(build(entries[:count]), ensure_ascii=False).encode())

    fits, too_many = 0, len(entries)  # entries[:fits] fit, entries[:too_many] do not
    while too_many - fits > 1:
        middle = (fits + too_many) // 2
        fits, too_many = (middle, too_many) if size(middle) <= limit else (fits, middle)
    return json.dumps(build(entries[:fits]), ensure_ascii=False)


def _downsample(values: list[float], limit: int) -> list[float]:
    """At most ``limit`` points, each the mean of an equal run of steps (the curve keeps its shape)."""
    if len(values) <= limit:
        return values
    size = len(values) / limit
    return [
        round(sum(values[int(i * size) : int((i + 1) * size)]) / len(values[int(i * size) : int((i + 1) * size)]), 6)
        for i in range(limit)
    ]
