"""How the loop reads a dataset: the ``TrainingData`` protocol, the caption function, and the endless
shuffled epochs of batches (a pure function of the seed, so a resumed run can skip to any step).

A dataset may also say which items each epoch trains (``epoch_indices(epoch)``; default: every item
``repeats`` times) and weigh each item's loss (``loss_weights``; default 1): regularisation images
(``trainer_core.data.regularization``) use both."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np


class _Item(Protocol):
    caption: str
    repeats: int
    bucket: tuple[int, int]


class TrainingData(Protocol):
    """What the loop reads of a dataset (``trainer_core.data.dataset.Dataset`` provides it)."""

    @property
    def items(self) -> Sequence[Any]: ...

    def load_image(self, item: Any) -> np.ndarray: ...


RECORDED_STEPS = 100_000  # steps whose items a run keeps (a tuple of a few ints each: a few MB at most)

# (dataset item, rng) -> the caption a step trains with; rng=None means no random processing.
CaptionFunction = Callable[[Any, "random.Random | None"], str]


def batches(data: TrainingData, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless epochs: every item ``repeats`` times, shuffled, batched within one bucket (its size and,
    for clips, its frame count: latents of one batch have one shape).

    Epoch ``e`` is shuffled by its own ``Random((seed, e))``, so the sequence is a pure function of the
    seed and a resumed run can skip to any position."""
    epoch = 0
    while True:
        generator = random.Random(f"{seed}:{epoch}")
        by_bucket: dict[tuple[int, ...], list[int]] = {}
        for index in epoch_indices(data, epoch):
            item = data.items[index]
            by_bucket.setdefault((*item.bucket, max(1, int(getattr(item, "frames", 1) or 1))), []).append(index)
        epoch_batches: list[list[int]] = []
        for indices in by_bucket.values():
            generator.shuffle(indices)
            epoch_batches.extend(indices[i : i + batch_size] for i in range(0, len(indices), batch_size))
        generator.shuffle(epoch_batches)
        yield from epoch_batches
        epoch += 1


def epoch_indices(data: TrainingData, epoch: int) -> list[int]:
    """The item indices epoch ``epoch`` trains, each as often as it is trained."""
    chosen = getattr(data, "epoch_indices", None)
    if chosen is not None:
        return list(chosen(epoch))
    return [index for index, item in enumerate(data.items) for _ in range(max(1, int(item.repeats)))]


def loss_weights(data: TrainingData) -> list[float]:
    """Each item's loss weight (``prior_loss_weight`` for regularisation images; 1 otherwise)."""
    weights = getattr(data, "loss_weights", None)
    return [1.0] * len(data.items) if weights is None else list(weights)


def next_step_batch(data_batches: Iterator[list[int]], accumulation: int, record: list[tuple[int, ...]]) -> list[list[int]]:
    """The ``accumulation`` batches of the next optimizer step; the items they hold are added to ``record``
    (one tuple per step, at most ``RECORDED_STEPS``: the loss diagnosis names the files of a step)."""
    batch = [next(data_batches) for _ in range(accumulation)]
    if len(record) < RECORDED_STEPS:
        record.append(tuple(index for indices in batch for index in indices))
    return batch


def item_files(data: TrainingData, steps: Sequence[tuple[int, ...]]) -> list[tuple[str, ...]]:
    """Each recorded step's items as file paths (``image_path``), or as "item <n>" for items without one."""
    names = [str(getattr(item, "image_path", f"item {index}")) for index, item in enumerate(data.items)]
    return [tuple(names[index] for index in step) for step in steps]


def samples_per_epoch(data: TrainingData) -> int:
    return len(epoch_indices(data, 0))
