"""How the loop reads a dataset: the ``TrainingData`` protocol, the caption function, and the endless
shuffled epochs of batches (a pure function of the seed, so a resumed run can skip to any step)."""

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


# (dataset item, rng) -> the caption a step trains with; rng=None means no random processing.
CaptionFunction = Callable[[Any, "random.Random | None"], str]


def batches(data: TrainingData, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless epochs: every item ``repeats`` times, shuffled, batched within one bucket.

    Epoch ``e`` is shuffled by its own ``Random((seed, e))``, so the sequence is a pure function of the
    seed and a resumed run can skip to any position."""
    epoch = 0
    while True:
        generator = random.Random(f"{seed}:{epoch}")
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for index, item in enumerate(data.items):
            by_bucket.setdefault(tuple(item.bucket), []).extend([index] * max(1, int(item.repeats)))
        epoch_batches: list[list[int]] = []
        for indices in by_bucket.values():
            generator.shuffle(indices)
            epoch_batches.extend(indices[i : i + batch_size] for i in range(0, len(indices), batch_size))
        generator.shuffle(epoch_batches)
        yield from epoch_batches
        epoch += 1


def samples_per_epoch(data: TrainingData) -> int:
    return sum(max(1, int(item.repeats)) for item in data.items)
