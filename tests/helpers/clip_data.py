"""A stand-in for Load Dataset's clip datasets (issue #17's contract between the dataset and the trainer),
used at the MODEL level until the real one lands: items with ``frames`` (1 = an image) and ``clip`` (a
frozen ``ClipInfo`` with the exact source frame indices the item trains), and a dataset with
``load_frames(item)`` -> float32 ``[F, H, W, 3]`` in [0, 1] at the item's bucket size, ``load_image(item)``
(a clip's first sampled frame) and ``pixel_key(item)``.

The clips are generated: a coloured square moving across a dark ground, one step per source frame, so
frames differ and a window's frame indices decide its pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClipInfo:
    source_frames: int
    fps: float
    width: int
    height: int
    frame_indices: tuple[int, ...]


@dataclass(frozen=True)
class ClipItem:
    caption: str
    repeats: int
    bucket: tuple[int, int]  # (width, height)
    frames: int = 1
    clip: ClipInfo | None = None
    index: int = 0


def clip_item(index: int, frames: int, size: tuple[int, int] = (32, 32), stride: int = 1, start: int = 0,
              caption: str | None = None) -> ClipItem:
    """A clip window of ``frames`` frames (source indices start, start + stride, ...); ``frames`` 1 without
    a stride is an image."""
    indices = tuple(start + stride * k for k in range(frames))
    info = ClipInfo(indices[-1] + 1, 16.0, size[0], size[1], indices) if frames > 1 else None
    return ClipItem(caption or f"sks moving square {index}", 1, size, frames, info, index)


class StandInClips:
    """Items (``ClipItem``) whose pixels are generated, as Load Dataset's clip datasets give them."""

    def __init__(self, items):
        self.items = tuple(items)

    def load_frames(self, item: ClipItem) -> np.ndarray:
        indices = item.clip.frame_indices if item.clip is not None else (0,)
        return np.stack([self._frame(item, source) for source in indices])

    def load_image(self, item: ClipItem) -> np.ndarray:
        return self.load_frames(item)[0]

    def pixel_key(self, item: ClipItem) -> str:
        return f"stand-in clip {item.index} {item.bucket}"

    @staticmethod
    def _frame(item: ClipItem, source: int) -> np.ndarray:
        width, height = item.bucket
        frame = np.full((height, width, 3), 0.1, np.float32)
        side = max(4, min(width, height) // 3)
        left = (2 * source + 3 * item.index) % max(1, width - side)
        top = (item.index * 5) % max(1, height - side)
        frame[top : top + side, left : left + side] = (0.9, 0.3 + 0.1 * (item.index % 3), 0.2)
        return frame
