"""Aspect-ratio buckets: which training size each image gets.

Kohya's scheme: every bucket has an area of at most ``resolution²`` and sides that are multiples of
the bucket step within ``[min_side, max_side]``; an image goes to the bucket whose aspect ratio is
closest to its own, so it is scaled and centre-cropped by as little as possible and never stretched.
Aspect ratios are compared on a log scale so that 2:1 and 1:2 are equally far from 1:1.
"""

from __future__ import annotations

import math

Size = tuple[int, int]  # (width, height)


def make_buckets(resolution: int, step: int, min_side: int, max_side: int) -> tuple[Size, ...]:
    """All (width, height) buckets for a target resolution, sorted by width.

    Every bucket's area is at most ``resolution**2``, its sides are multiples of ``step`` inside
    ``[min_side, max_side]``, and the square bucket is always present.
    """
    max_area = resolution * resolution
    buckets: set[Size] = set()
    square = max(step, resolution // step * step)
    buckets.add((square, square))
    width = min_side
    while width <= max_side:
        height = min(max_side, (max_area // width) // step * step)
        if height >= min_side:
            buckets.add((width, height))
            buckets.add((height, width))
        width += step
    return tuple(sorted(buckets))


def closest_bucket(size: Size, buckets: tuple[Size, ...]) -> Size:
    """The bucket whose aspect ratio is closest to ``size``'s; ties go to the larger bucket."""
    width, height = size
    aspect = math.log(max(width, 1) / max(height, 1))
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1], b))


def cover_size(size: Size, target: Size) -> Size:
    """The size ``size`` scales to so that it covers ``target`` while keeping its aspect ratio.

    One side equals the target's, the other is at least the target's (rounded up), so a centre crop
    to ``target`` follows without stretching.
    """
    width, height = size
    scale = max(target[0] / width, target[1] / height)
    return max(target[0], math.ceil(width * scale - 1e-6)), max(target[1], math.ceil(height * scale - 1e-6))


def fit_size(size: Size, target: Size) -> Size:
    """The size ``size`` scales to so that it fits entirely inside ``target`` (aspect kept)."""
    width, height = size
    scale = min(target[0] / width, target[1] / height)
    return (
        min(target[0], max(1, round(width * scale))),
        min(target[1], max(1, round(height * scale))),
    )
