"""Clips as training items: which source frames each item trains, and reading them at the bucket size.

A clip gives one item per frame window (``ClipInfo.indices``: the exact source frames, fixed at scan
time, so sampling is deterministic and latents can be cached). ``DatasetOptions`` chooses the windows:

- the window length is ``frame_count`` snapped down to 4k+1 (``frames_per_clip``);
- consecutive window frames are ``frame_stride`` source frames apart, times ``fps / target_fps`` when
  retiming (never below 1: a clip is not slowed down by repeating frames); index i of a window starting at
  s is ``s + floor(i * step)``;
- ``frame_start`` 'head' starts at frame 0; 'uniform' spreads ``clip_windows`` windows evenly from the
  first frame to the last (the first starts at 0, the last ends on the last frame); 'random' draws one
  start per clip from a generator seeded by the clip's file name, once per scan (the same each scan);
- a clip shorter than a window is an unusable file (``short_clips`` 'as_bad_file'), or trains the frames
  it has, snapped down to 4k+1 (``short_clips`` 'shorten').
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from .clips import ClipHeader, ClipKind, decode_frames
from .dataset_folder import frame_files
from .dataset_options import DatasetOptions, snap_frames
from .image_files import Color, ImageFileError, Size, resize_to_bucket, to_float_array
from .image_fingerprints import ImageFingerprint, bytes_digest, fingerprint_of

STRIP_FRAMES = 4  # frames in a clip's contact-sheet strip
_DIGEST_BYTES = 1 << 20  # a clip's digest reads its size and its first and last MiB


@dataclass(frozen=True)
class ClipInfo:
    """Where a clip item's frames come from: the clip's header and the exact source frames it trains."""

    kind: ClipKind
    source_frames: int  # frames in the whole clip
    fps: float  # the clip's own rate; 0 = unknown (a folder of frames)
    indices: tuple[int, ...]  # the source frames this item trains, in order
    window: int = 0  # which of the clip's windows (0-based)
    windows: int = 1  # how many windows the clip gives
    shortened: bool = False  # a short clip trained with the frames it has (short_clips 'shorten')

    @property
    def duration(self) -> float:
        """The whole clip's length in seconds (0 when the rate is unknown)."""
        return self.source_frames / self.fps if self.fps else 0.0

    @property
    def window_seconds(self) -> float:
        """The time the trained window covers in the source (0 when the rate is unknown)."""
        return (self.indices[-1] - self.indices[0] + 1) / self.fps if self.fps else 0.0


def frame_step(fps: float, options: DatasetOptions) -> float:
    """Source frames between two trained frames."""
    retime = fps / options.target_fps if options.target_fps and fps > options.target_fps else 1.0
    return options.frame_stride * retime


def window(start: int, frames: int, step: float) -> tuple[int, ...]:
    """The source frames of a window of ``frames`` frames from ``start``, ``step`` apart."""
    return tuple(start + math.floor(i * step + 1e-9) for i in range(frames))


def span(frames: int, step: float) -> int:
    """Source frames a window of ``frames`` frames covers."""
    return math.floor((frames - 1) * step + 1e-9) + 1


def plan_clip(path: Path, header: ClipHeader, options: DatasetOptions) -> tuple[ClipInfo, ...]:
    """The clip's items (one per window). Raises ``ImageFileError`` for a clip too short for one window."""
    frames, step = options.frames_per_clip, frame_step(header.fps, options)
    count, shortened = header.frame_count, False
    if span(frames, step) > count:
        if options.short_clips != "shorten":
            every = f", every {step:g} source frames," if step != 1 else ""
            raise ImageFileError(
                path, f"has {count} frames, fewer than the {span(frames, step)} a window of {frames} frames{every}"
                " needs", "Use a longer clip, lower frame_count, frame_stride or raise target_fps; set short_clips"
                " to 'shorten' to train the frames it has, or on_bad_file to 'skip' to leave it out.",
            )
        while frames > 1 and span(frames, step) > count:
            frames = snap_frames(frames - 1)
        shortened = True
    last_start = count - span(frames, step)
    if options.frame_start == "uniform" and options.clip_windows > 1 and last_start > 0:
        starts = sorted({round(k * last_start / (options.clip_windows - 1)) for k in range(options.clip_windows)})
    elif options.frame_start == "random":
        starts = [random.Random(f"lora-lab:{path.name}").randint(0, last_start)]
    else:
        starts = [0]
    return tuple(
        ClipInfo(header.kind, count, header.fps, window(start, frames, step), number, len(starts), shortened)
        for number, start in enumerate(starts)
    )


def load_clip_frames(
    path: Path, clip: ClipInfo, bucket: Size, center_crop: bool, background: Color
) -> np.ndarray:
    """The item's frames: float32 [F, H, W, 3] in [0, 1] at exactly its bucket size."""
    images = _decoded(path, clip, clip.indices, background)
    return np.stack([to_float_array(resize_to_bucket(image, bucket, center_crop, background)) for image in images])


def strip_indices(clip: ClipInfo, count: int = STRIP_FRAMES) -> tuple[int, ...]:
    """Up to ``count`` of the window's frames, evenly spread, first and last included."""
    frames = clip.indices
    if len(frames) <= count:
        return frames
    return tuple(frames[round(k * (len(frames) - 1) / (count - 1))] for k in range(count))


def read_clip_fingerprint(
    path: Path, clip: ClipInfo, background: Color, thumbnail_size: int, keep_thumbnail: bool
) -> ImageFingerprint:
    """The report's read of one clip item: its strip frames decoded (so a truncated window shows as damaged),
    hashed by its first frame; the thumbnail is the strip. Never raises for bad data."""
    try:
        digest = clip_digest(path)
        frames = _decoded(path, clip, strip_indices(clip), background)
    except ImageFileError as error:
        return ImageFingerprint(path, error=error.reason)
    except OSError as error:
        return ImageFingerprint(path, error=f"cannot be read ({error.strerror or error})")
    strip = frame_strip(frames, thumbnail_size) if keep_thumbnail else None
    return fingerprint_of(path, digest, frames[0], thumbnail_size, strip)


def first_frame(path: Path, clip: ClipInfo, background: Color) -> Image.Image:
    """The first frame the item trains, as decoded (for captioners and other readers of one picture)."""
    return _decoded(path, clip, clip.indices[:1], background)[0]


def frame_strip(frames: list[Image.Image], width: int) -> Image.Image:
    """The frames side by side, scaled to fit ``width`` together."""
    cell = max(1, width // max(1, len(frames)))
    scaled = []
    for frame in frames:
        copy = frame.copy()
        copy.thumbnail((cell, cell), Image.Resampling.BILINEAR)
        scaled.append(copy)
    strip = Image.new("RGB", (cell * len(scaled), max(image.height for image in scaled)), (32, 32, 32))
    for position, image in enumerate(scaled):
        strip.paste(image, (position * cell + (cell - image.width) // 2, (strip.height - image.height) // 2))
    return strip


def clip_stamp(path: Path) -> list:
    """What identifies a clip's source without reading it: size and modification time (of every frame,
    for a folder of frames)."""
    files = frame_files(path) if path.is_dir() else [path]
    stats = [file.stat() for file in files]
    return [[file.name, stat.st_size, stat.st_mtime_ns] for file, stat in zip(files, stats, strict=True)]


def clip_pixel_key(path: Path, clip: ClipInfo, bucket: Size, center_crop: bool, background: Color) -> str:
    """Names the pixels a clip item trains with: the source (name, size, time), its frames, the fit, PyAV's version."""
    try:
        stamp = clip_stamp(path)
    except FileNotFoundError as error:
        raise ImageFileError(path, "was removed after the dataset was loaded", "Run LoadDataset again.") from error
    record = [stamp, list(clip.indices), bucket, center_crop, background, av.__version__]
    return bytes_digest(json.dumps(record).encode()) + json.dumps([bucket, len(clip.indices)])


def _decoded(path: Path, clip: ClipInfo, indices: tuple[int, ...], background: Color) -> list[Image.Image]:
    try:
        return decode_frames(path, clip.kind, indices, background)
    except FileNotFoundError as error:
        raise ImageFileError(path, "was removed after the dataset was loaded", "Run LoadDataset again.") from error


def clip_digest(path: Path) -> str:
    """Tells identical clip files apart without reading gigabytes: the size and the first and last MiB."""
    if path.is_dir():
        return bytes_digest(b"".join(file.read_bytes() for file in frame_files(path)))
    digest = hashlib.blake2b(digest_size=16)
    size = path.stat().st_size
    with open(path, "rb") as file:
        digest.update(str(size).encode() + file.read(_DIGEST_BYTES))
        file.seek(max(0, size - _DIGEST_BYTES))
        digest.update(file.read())
    return digest.hexdigest()
