"""Fingerprints of images for finding duplicates, read in one pass with bounded memory.

Exact duplicates share their file bytes (BLAKE2 digest). Near duplicates (resized, re-encoded,
lightly edited copies) share their picture: a 64-bit difference hash of a 9x8 grey thumbnail differs
in at most a few bits *and* a 4x4 colour signature is close; the colour check keeps flat or simple
pictures of different colours (whose difference hashes are all alike) apart. ``pixel_key`` names the
pixels an image trains with, for caches of latents. The same read measures the picture's quality
(``quality.measure_quality``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

from .image_files import Color, ImageFileError, Size, decode_rgb
from .quality import ANALYSIS_SIZE, ImageQuality, measure_quality

COLOUR_TOLERANCE = 8  # mean absolute difference (0-255) of two near duplicates' colour signatures


@dataclass(frozen=True)
class ImageFingerprint:
    """What one read of an image leaves behind: a few bytes, and a thumbnail only when asked."""

    path: Path
    digest: str = ""
    difference_hash: int = 0
    colour: np.ndarray = field(default_factory=lambda: np.zeros((4, 4, 3), np.uint8), repr=False)
    thumbnail: Image.Image | None = field(default=None, repr=False)
    error: str | None = None  # why the image could not be decoded
    quality: ImageQuality | None = None  # sharpness, exposure, JPEG quality (quality.py)


def read_fingerprint(
    path: Path, background: Color, thumbnail_size: int, keep_thumbnail: bool, check_quality: bool = True
) -> ImageFingerprint:
    """Read the file once: digest its bytes, decode a reduced picture, hash it and (``check_quality``)
    measure its quality. Never raises for bad data."""
    draft = max(thumbnail_size, ANALYSIS_SIZE) if check_quality else thumbnail_size
    try:
        data = path.read_bytes()
        image = decode_rgb(path, background, draft_size=(draft, draft), data=data)
    except ImageFileError as error:
        return ImageFingerprint(path, error=error.reason)
    except OSError as error:
        return ImageFingerprint(path, error=f"cannot be read ({error.strerror or error})")
    digest = bytes_digest(data)
    quality = measure_quality(image, data) if check_quality else None
    del data
    image.thumbnail((thumbnail_size, thumbnail_size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return fingerprint_of(path, digest, image, thumbnail_size, image if keep_thumbnail else None, quality)


def fingerprint_of(
    path: Path, digest: str, image: Image.Image, thumbnail_size: int, thumbnail: Image.Image | None,
    quality: ImageQuality | None = None,
) -> ImageFingerprint:
    """The fingerprint of a decoded picture (the hashes read a copy reduced to ``thumbnail_size``)."""
    if max(image.size) > thumbnail_size:
        image = image.copy()
        image.thumbnail((thumbnail_size, thumbnail_size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    grey = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    difference_hash = int.from_bytes(np.packbits(bits).tobytes(), "big")
    colour = np.asarray(image.convert("RGB").resize((4, 4), Image.Resampling.BOX), dtype=np.uint8)
    return ImageFingerprint(path, digest, difference_hash, colour, thumbnail, quality=quality)


def bytes_digest(data: bytes) -> str:
    """The digest that tells identical files apart (BLAKE2, 128 bits)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def pixel_key(path: Path, bucket: Size, center_crop: bool, background: Color) -> str:
    """Names the pixels an image is trained with: its file's bytes, the bucket it is fitted to, how it is
    fitted (crop or pad, background) and the decoder (Pillow's version)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise ImageFileError(path, "was removed after the dataset was loaded", "Run LoadDataset again.") from error
    return bytes_digest(data) + json.dumps([bucket, center_crop, background, PIL.__version__])


def exact_duplicate_groups(prints: Sequence[ImageFingerprint]) -> tuple[tuple[Path, ...], ...]:
    """Groups of files with identical bytes, in first-seen order."""
    groups: dict[str, list[Path]] = {}
    for fingerprint in prints:
        if fingerprint.error is None:
            groups.setdefault(fingerprint.digest, []).append(fingerprint.path)
    return tuple(tuple(paths) for paths in groups.values() if len(paths) > 1)


def near_duplicate_groups(
    prints: Sequence[ImageFingerprint], max_distance: int
) -> tuple[tuple[Path, ...], ...]:
    """Groups of different files that show (almost) the same picture.

    Byte-identical copies count once (they are exact duplicates). The hashes are compared all with
    all, a block of rows at a time (a few MB): O(n²/2) comparisons, about 0.1 s for 5,000 images.
    """
    members: list[ImageFingerprint] = []
    seen: set[str] = set()
    for fingerprint in prints:
        if fingerprint.error is None and fingerprint.digest not in seen:
            seen.add(fingerprint.digest)
            members.append(fingerprint)
    if max_distance <= 0 or len(members) < 2:
        return ()
    hashes = np.array([m.difference_hash for m in members], dtype=np.uint64)
    colours = np.stack([m.colour.reshape(-1) for m in members]).astype(np.int16)
    # Leader clustering: each group is one picture and the pictures close to *it*, so a chain of
    # small edits (1 degree rotations) does not merge pictures that are far apart.
    similar = _later_close_hashes(hashes, max_distance)
    grouped = np.zeros(len(members), dtype=bool)
    groups: list[tuple[Path, ...]] = []
    for leader in range(len(members) - 1):
        if grouped[leader]:
            continue
        close = similar[leader][~grouped[similar[leader]]]
        if close.size:
            close = close[np.abs(colours[close] - colours[leader]).mean(axis=1) <= COLOUR_TOLERANCE]
        if close.size:
            grouped[close] = True
            groups.append((members[leader].path, *(members[int(i)].path for i in close)))
    return tuple(groups)


def _later_close_hashes(hashes: np.ndarray, max_distance: int) -> list[np.ndarray]:
    """For each hash, the indices after it of the hashes at most ``max_distance`` bits away."""
    count = len(hashes)
    rows = max(1, (1 << 20) // count)  # a block of rows x count comparisons: about 1 M at a time
    later: list[np.ndarray] = []
    for start in range(0, count, rows):
        # Row r is hash start + r, column c is hash start + c: the hashes after it lie above the diagonal.
        block = np.triu(_popcount(hashes[start : start + rows, None] ^ hashes[None, start:]) <= max_distance, k=1)
        row_of, column = np.nonzero(block)
        later.extend(np.split(column + start, np.cumsum(np.bincount(row_of, minlength=len(block)))[:-1]))
    return later


def _popcount(values: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(values)
    return np.unpackbits(values.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
