"""Regularisation (class) images for prior preservation, balanced against the training images as kohya does.

Each epoch trains every training image with its repeats and as many regularisation samples as that
(kohya's ``num_train_images``), their loss multiplied by ``prior_loss_weight``. kohya gives the
regularisation images fixed repeats so that they add up to that number, which leaves the images
past it unused when the class set is the larger; here the class set is cycled instead: epoch e takes
the next samples of the endless sequence of class images (each ``repeats`` times, in the dataset's
order), so every class image is used, and a class set of exactly the training samples' size gives
kohya's epochs. Each set keeps its own captions (the class prompt, from its own Load Dataset).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dataset import Dataset, DatasetError, DatasetItem

REGULARIZATION_HELP = (
    "Class images for prior preservation (kohya's reg images), from a second Load Dataset: pictures of the class "
    "without your subject, captioned with the class prompt (their own .txt captions, or that Load Dataset's "
    "trigger_word). Each epoch trains as many of them as training images x repeats, their loss weighed by "
    "prior_loss_weight (Loss Settings). Not connected = none."
)


@dataclass(frozen=True)
class RegularizedDataset:
    """The training dataset and a class dataset, read by the training loop as one (``TrainingData``)."""

    training: Dataset
    regularization: Dataset
    prior_loss_weight: float = 1.0
    items: tuple[DatasetItem, ...] = field(init=False, repr=False, compare=False)  # training first, then class
    _regularization_paths: frozenset[Path] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", self.training.items + self.regularization.items)
        object.__setattr__(self, "_regularization_paths",
                           frozenset(item.image_path for item in self.regularization.items))

    @property
    def loss_weights(self) -> list[float]:
        """Per item: 1 for a training image, ``prior_loss_weight`` for a class image."""
        return [1.0] * len(self.training.items) + [self.prior_loss_weight] * len(self.regularization.items)

    def epoch_indices(self, epoch: int) -> list[int]:
        """Indices into ``items`` that epoch ``epoch`` trains: each training image ``repeats`` times, then as
        many class samples, the next ones of the cycled class set."""
        training = [i for i, item in enumerate(self.training.items) for _ in range(max(1, item.repeats))]
        offset = len(self.training.items)
        cycle = [offset + i for i, item in enumerate(self.regularization.items) for _ in range(max(1, item.repeats))]
        start = epoch * len(training)
        return training + [cycle[(start + k) % len(cycle)] for k in range(len(training))]

    def _owner(self, item: DatasetItem) -> Dataset:
        return self.regularization if item.image_path in self._regularization_paths else self.training

    def load_image(self, item: DatasetItem) -> np.ndarray:
        return self._owner(item).load_image(item)

    def load_mask(self, item: DatasetItem) -> np.ndarray | None:
        return self._owner(item).load_mask(item)

    def caption_for(self, item: DatasetItem, rng: random.Random | None = None) -> str:
        """The item's caption as its own Load Dataset processes it (trigger word, shuffling...)."""
        return self._owner(item).caption_for(item, rng)

    @property
    def random_captions(self) -> bool:
        return self.training.caption_options.is_random or self.regularization.caption_options.is_random


def check_regularization(training: Dataset, regularization: Dataset, field_name: str = "regularization_images") -> None:
    """Refuse a class dataset that would train the concept instead of guarding the class: the same
    folder as the training images, or one inside the other."""
    train_root, class_root = training.root.resolve(), regularization.root.resolve()
    fix = (f"Point the Load Dataset wired into {field_name} at a separate folder of class images (pictures "
           "of the class without your subject, e.g. other dogs for your dog, captioned with the class prompt), "
           f"or disconnect {field_name} to train without them.")
    if train_root == class_root:
        raise DatasetError(f"{field_name}: it reads the same folder as dataset ({train_root}): the class images "
                           f"would be the training images. {fix}")
    for inner, outer, what in ((class_root, train_root, "inside the dataset folder"),
                               (train_root, class_root, "holds the dataset folder")):
        if outer in inner.parents:
            raise DatasetError(f"{field_name}: its folder {class_root} {what} {train_root}: the same images "
                               f"would train as both. {fix}")
    shared = {item.image_path for item in training.items} & {item.image_path for item in regularization.items}
    if shared:
        raise DatasetError(f"{field_name}: {len(shared)} image(s) are in both datasets (e.g. {sorted(shared)[0]}). "
                           f"{fix}")


def random_captions(data: Dataset | RegularizedDataset) -> bool:
    """Whether any caption is processed at random (then captions are encoded at every step)."""
    if isinstance(data, RegularizedDataset):
        return data.random_captions
    return data.caption_options.is_random


def regularization_metadata(regularization: Dataset | None, prior_loss_weight: float) -> dict[str, str]:
    """kohya's ``ss_num_reg_images`` (class images with repeats, 0 without), ``ss_reg_dataset_dirs`` and
    ``ss_prior_loss_weight``."""
    return {
        "ss_num_reg_images": str(regularization.sample_count if regularization is not None else 0),
        "ss_reg_dataset_dirs": json.dumps(regularization.dataset_dirs_metadata() if regularization is not None else {},
                                          ensure_ascii=False),
        "ss_prior_loss_weight": json.dumps(prior_loss_weight),
    }


def regularized(training: Dataset, regularization: Dataset | None, prior_loss_weight: float) -> Dataset | RegularizedDataset:
    """What the loop trains on: ``training`` alone, or with ``regularization`` balanced against it."""
    if regularization is None:
        return training
    check_regularization(training, regularization)
    return RegularizedDataset(training, regularization, prior_loss_weight)

