"""A LoRA's metadata stays small however large its dataset: the file header of a LoRA trained on 50,000
images with sentence captions in 2,000 folders, over 100,000 steps, is under 192 KiB (without the bounds:
about 4 MiB), and the tags a reader looks for (the most frequent) are all there with their counts."""

from __future__ import annotations

import json

from trainer_core.adapters.config import LoRAConfig
from trainer_core.data.captions import tag_frequencies
from trainer_core.training.config import TrainingConfig
from trainer_core.training.metadata import DATASET_JSON_LIMIT, training_metadata

HEADER_BOUND = 192 * 1024  # measured: 161 KiB (64 KiB of tags and 64 KiB of folders, JSON-escaped, and the rest)


def metadata_for(tag_frequency, dataset_dirs, losses):
    return training_metadata(
        LoRAConfig(), TrainingConfig(), steps=len(losses), total_steps=len(losses), num_images=50_000,
        samples_per_epoch=50_000, resolution=512, trigger_word="sks", tag_frequency=tag_frequency,
        dataset_dirs=dataset_dirs, base_model_version="sd_v1", base_model_hash="0" * 64, started_at=0.0,
        finished_at=1.0, mixed_precision="fp32", losses=losses,
    )


def header_bytes(metadata: dict[str, str]) -> int:
    return len(json.dumps(metadata, ensure_ascii=False).encode())


def test_a_huge_datasets_metadata_stays_small_and_keeps_the_most_frequent_tags():
    folders = [f"{index % 50 + 1}_folder_{index:04d}" for index in range(2000)]
    tag_frequency = {}
    for number, folder in enumerate(folders):
        captions = [f"sks, photo, a detailed sentence about picture {number}-{index} with a long description"
                    for index in range(25)]
        tag_frequency[folder] = tag_frequencies(captions)
    dataset_dirs = {folder: {"n_repeats": int(folder.split("_")[0]), "img_count": 25} for folder in folders}
    losses = [0.1 + (step % 7) / 100 for step in range(100_000)]
    unbounded = len(json.dumps(tag_frequency, ensure_ascii=False).encode()) + len(json.dumps(dataset_dirs).encode())

    metadata = metadata_for(tag_frequency, dataset_dirs, losses)

    assert header_bytes(metadata) < HEADER_BOUND < unbounded / 10, (header_bytes(metadata), unbounded)
    kept = json.loads(metadata["ss_tag_frequency"])
    assert len(metadata["ss_tag_frequency"].encode()) <= DATASET_JSON_LIMIT
    assert all(kept[folder]["sks"] == 25 and kept[folder]["photo"] == 25 for folder in kept)
    assert len(json.loads(metadata["ss_dataset_dirs"])) > 100
    assert len(json.loads(metadata["lora_lab_losses"])) == 2000


def test_a_small_datasets_metadata_is_written_whole():
    tag_frequency = {"10_cat": tag_frequencies(["sks, cat, sitting", "sks, cat, running"])}
    dataset_dirs = {"10_cat": {"n_repeats": 10, "img_count": 2}}
    metadata = metadata_for(tag_frequency, dataset_dirs, [0.2, 0.1])
    assert json.loads(metadata["ss_tag_frequency"]) == {"10_cat": {"sks": 2, "cat": 2, "sitting": 1, "running": 1}}
    assert json.loads(metadata["ss_dataset_dirs"]) == dataset_dirs
    assert json.loads(metadata["lora_lab_losses"]) == [0.2, 0.1]
