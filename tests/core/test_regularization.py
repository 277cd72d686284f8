"""Regularisation images: balanced against the training images as kohya balances them, weighed by
prior_loss_weight, captioned by their own Load Dataset, and refused when they are the training images."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from tests.core.test_masked_loss import CellDenoiser, CellEncoder, NoText
from trainer_core.adapters.config import LoRAConfig
from trainer_core.data.captions import CaptionOptions
from trainer_core.data.dataset import DatasetError, DatasetOptions, load_dataset
from trainer_core.data.regularization import RegularizedDataset, regularization_metadata, regularized
from trainer_core.training.config import TrainingConfig
from trainer_core.training.epochs import batches, samples_per_epoch
from trainer_core.training.loop import train_lora

OPTIONS = DatasetOptions(resolution=64, bucket_step=64)


def images(folder: Path, count: int, caption: str, colour=(200, 30, 30)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.new("RGB", (64, 64), (colour[0], colour[1], index * 20)).save(folder / f"{index:02d}.png")
        (folder / f"{index:02d}.txt").write_text(caption, encoding="utf-8")
    return folder


def kohya_reg_repeats(train_samples: int, reg_repeats: list[int]) -> list[int]:
    """kohya's DreamBoothDataset balancing (train_util.py), written from its description: register the class
    images in order with their own repeats until they reach the training samples, then add one repeat to
    each in turn until they do. Images never registered get 0."""
    repeats = [0] * len(reg_repeats)
    total, first = 0, True
    while total < train_samples:
        for index, own in enumerate(reg_repeats):
            if first:
                repeats[index] = own
                total += own
            else:
                repeats[index] += 1
                total += 1
            if total >= train_samples:
                break
        first = False
    return repeats


@pytest.mark.parametrize("class_images", [2, 5, 7])
def test_an_epoch_trains_as_many_class_samples_as_training_samples(tmp_path: Path, class_images: int):
    images(tmp_path / "train" / "2_sks", 2, "sks dog")  # 2 images x 2 repeats
    images(tmp_path / "train", 1, "sks dog")  # + 1 = 5 training samples
    training = load_dataset(tmp_path / "train", OPTIONS)
    classes = load_dataset(images(tmp_path / "class", class_images, "a dog"), OPTIONS)
    data = RegularizedDataset(training, classes)
    assert samples_per_epoch(training) == 5 and samples_per_epoch(data) == 10  # kohya doubles an epoch too

    first = Counter(data.epoch_indices(0))
    assert [first[i] for i in range(3)] == [item.repeats for item in training.items]
    class_counts = [first[3 + i] for i in range(class_images)]
    if class_images <= 5:  # as kohya registers them
        assert class_counts == kohya_reg_repeats(5, [1] * class_images)
    else:  # kohya would never train the last two; here the next epoch starts with them
        assert class_counts == [1] * 5 + [0, 0]
        second = Counter(data.epoch_indices(1))
        assert [second[3 + i] for i in range(class_images)] == [1, 1, 1, 0, 0, 1, 1]

    # The loop's batches draw exactly these each epoch, and class images weigh prior_loss_weight.
    drawn = Counter(i for batch in _first_epoch(data, 10) for i in batch)
    assert drawn == first
    weighted = RegularizedDataset(training, classes, prior_loss_weight=0.25)
    assert weighted.loss_weights == [1.0] * 3 + [0.25] * class_images


def _first_epoch(data, samples: int, seed: int = 3) -> list[list[int]]:
    stream = batches(data, 1, seed=seed)
    return [next(stream) for _ in range(samples)]


def test_class_images_keep_their_own_captions(tmp_path: Path):
    training = load_dataset(images(tmp_path / "train", 2, "a dog"), OPTIONS)
    training = training.with_caption_options(CaptionOptions(trigger_word="sks"))
    classes = load_dataset(images(tmp_path / "class", 2, "a dog"), OPTIONS)
    data = regularized(training, classes, 1.0)
    captions = [data.caption_for(item) for item in data.items]
    assert captions == ["sks, a dog", "sks, a dog", "a dog", "a dog"]
    assert regularized(training, None, 1.0) is training


def test_prior_loss_weight_weighs_the_class_images_loss(tmp_path: Path):
    training = load_dataset(images(tmp_path / "train", 2, "sks"), OPTIONS)
    classes = load_dataset(images(tmp_path / "class", 2, "dog", colour=(30, 200, 30)), OPTIONS)

    def losses(weight: float) -> list[float]:
        data = regularized(training, classes, weight)
        result = train_lora(CellDenoiser(), NoText(), CellEncoder(), data, LoRAConfig(rank=4, alpha=4, target="all_linear"),
                            TrainingConfig(steps=8, learning_rate=1e-2, prior_loss_weight=weight),
                            caption_for=data.caption_for)
        return result.losses

    steps = _first_epoch(regularized(training, classes, 1.0), 8, seed=1)  # the loop's: seed + 1
    is_class = [batch[0] >= 2 for batch in steps]
    assert sum(is_class) == 4
    silent = losses(0.0)
    assert all((loss == 0.0) == class_step for loss, class_step in zip(silent, is_class, strict=True))
    assert all(loss > 0 for loss in losses(1.0))


def test_the_same_or_a_nested_folder_is_refused_naming_the_input(tmp_path: Path):
    training = load_dataset(images(tmp_path / "train", 2, "sks"), OPTIONS)
    same = load_dataset(tmp_path / "train", OPTIONS)
    with pytest.raises(DatasetError, match="regularization_images: it reads the same folder as dataset"):
        regularized(training, same, 1.0)
    inner = load_dataset(images(tmp_path / "train" / "class", 2, "dog"), OPTIONS)
    with pytest.raises(DatasetError, match="regularization_images: its folder .* inside the dataset folder"):
        regularized(training, inner, 1.0)
    outer = load_dataset(tmp_path, OPTIONS)
    with pytest.raises(DatasetError, match="holds the dataset folder"):
        regularized(training, outer, 1.0)


def test_an_empty_class_folder_is_refused_by_its_load_dataset(tmp_path: Path):
    (tmp_path / "class").mkdir()
    with pytest.raises(DatasetError, match="No images in dataset folder .*class.*it is empty"):
        load_dataset(tmp_path / "class", OPTIONS)


def test_the_metadata_records_the_class_images_as_kohya_does(tmp_path: Path):
    classes = load_dataset(images(tmp_path / "3_dog", 2, "dog"), OPTIONS)
    values = regularization_metadata(classes, 0.5)
    assert values["ss_num_reg_images"] == "2"  # repeats count only from N_name folders below the root
    assert json.loads(values["ss_prior_loss_weight"]) == 0.5
    assert json.loads(values["ss_reg_dataset_dirs"]) == {"3_dog": {"n_repeats": 1, "img_count": 2}}
    assert regularization_metadata(None, 1.0)["ss_num_reg_images"] == "0"
