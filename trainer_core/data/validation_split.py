"""Setting images aside for validation: a share of the dataset, or a dataset of their own.

The share is split by image (an image's repeats go with it), chosen by the seed alone: the same dataset
and seed hold out the same images on every run, and the images left to train on keep their order, so a
run trains exactly as it would on a folder holding only them. ``share`` x images is rounded to the
nearest whole image, and up to one when it is below (0.1 of 3 images holds out 1: the note says so).
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

from .clip_items import clip_digest
from .dataset import Dataset, DatasetError

_SHARE_FIELD = "validation_share (on the LoRA Lab Samples and Checkpoints node)"


@dataclass(frozen=True)
class ValidationSplit:
    """The images to train on, the held-out ones (None: no validation) and a note for the person."""

    train: Dataset
    held_out: Dataset | None
    note: str = ""


def held_out_count(images: int, share: float) -> int:
    """How many of ``images`` a share holds out: the nearest whole number (halves up), at least one."""
    return max(1, math.floor(images * share + 0.5)) if share > 0 else 0


def split_for_validation(
    dataset: Dataset, share: float, seed: int, validation_images: Dataset | None = None
) -> ValidationSplit:
    """``dataset`` split for training and validation: ``share`` of its images held out (chosen by ``seed``),
    or ``validation_images`` as the held-out set; neither = no validation. Errors name the field and the fix."""
    if validation_images is not None:
        if share > 0:
            raise DatasetError(
                f"{_SHARE_FIELD} is {share} and a dataset is connected to Train LoRA's validation_images: "
                "validate on one of them. Set validation_share to 0 to validate on validation_images, or "
                "disconnect validation_images to hold out a share of the dataset."
            )
        _check_apart(dataset, validation_images)
        note = f"validation: the {len(validation_images.items)} image(s) of validation_images ({validation_images.root})"
        return ValidationSplit(dataset, validation_images, note)
    if share <= 0:
        return ValidationSplit(dataset, None)
    paths = list(dict.fromkeys(item.image_path for item in dataset.items))  # a clip's windows are held out together
    images = len(paths)
    count = held_out_count(images, share)
    if count >= images:
        most = math.floor((images - 1) / images * 100) / 100
        fix = (f"lower validation_share to {most} or less" if images > 1
               else "a dataset of one image cannot be split")
        raise DatasetError(
            f"{_SHARE_FIELD} {share} holds out {count} of the {images} image(s) in {dataset.root}, leaving none to "
            f"train on: {fix}, add images, or connect a second Load Dataset to Train LoRA's validation_images "
            "and set validation_share to 0."
        )
    chosen = {paths[i] for i in random.Random(f"validation:{seed}").sample(range(images), count)}
    train = _subset(dataset, [i for i, item in enumerate(dataset.items) if item.image_path not in chosen], "train")
    held_out = _subset(dataset, [i for i, item in enumerate(dataset.items) if item.image_path in chosen], "held out")
    names = ", ".join(dict.fromkeys(i.image_path.name for i in held_out.items))
    note = f"validation: {count} of {images} images held out ({names})"
    if math.floor(images * share + 0.5) == 0:
        note += f"; validation_share {share} of {images} images is {images * share:g} image, rounded up to 1"
    return ValidationSplit(train, held_out, note)


def _subset(dataset: Dataset, indices: list[int], part: str) -> Dataset:
    items = tuple(dataset.items[i] for i in indices)
    digest = hashlib.sha256(f"{dataset.content_hash}:{part}:{indices}".encode()).hexdigest()[:16]
    return replace(dataset, items=items, content_hash=digest)


def _check_apart(dataset: Dataset, validation_images: Dataset) -> None:
    """Held-out images must not be trained on: no validation image may be a training image, or a byte-identical
    copy of one (only files of equal size are read)."""
    by_size: dict[int, list[Path]] = {}
    for item in dataset.items:
        by_size.setdefault(item.image_path.stat().st_size, []).append(item.image_path)
    digests: dict[Path, str] = {}

    def digest(path: Path) -> str:
        if path not in digests:
            digests[path] = clip_digest(path) if path.is_dir() else hashlib.blake2b(path.read_bytes(),
                                                                                      digest_size=16).hexdigest()
        return digests[path]

    shared: list[tuple[Path, Path]] = []
    for item in validation_images.items:
        same_size = by_size.get(item.image_path.stat().st_size, [])
        shared += [(item.image_path, path) for path in same_size if digest(path) == digest(item.image_path)][:1]
    if shared:
        image, training_image = shared[0]
        raise DatasetError(
            f"validation_images: {len(shared)} of its {len(validation_images.items)} image(s) are also in the "
            f"training dataset (first: {image}, the same file as {training_image}), and held-out images must not be "
            "trained on. Give validation_images a folder of other images (move them out of the dataset's folder)."
        )
