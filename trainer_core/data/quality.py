"""Picture quality flags: images that would teach the LoRA blur, bad exposure, JPEG blocks or upscaling.

Measured while the report reads each image anyway (``image_fingerprints.read_fingerprint``), on one grey
copy reduced to ``ANALYSIS_SIZE`` px on its longer side (never enlarged), so a picture gives the same
figures whatever its file's size; only a few numbers per image are kept:

- sharpness: the variance of the Laplacian (4-neighbour kernel) of that grey copy, in its sharpest tile
  of ``SHARPNESS_TILE`` px: the whole picture's variance would call flat drawings (sparse edges) and
  photos with a blurred background blurry; flat pictures (contrast under ``FLAT_CONTRAST``) have no
  detail to judge and are not called blurry;
- exposure: its mean luminance (0-255) and the shares of pixels clipped to black (<= 5) or white (>= 250);
  too bright needs both a high mean and clipped whites (white paper is fine, burnt-out whites are not);
- JPEG quality: estimated from the file's luminance quantisation table (Pillow's ``quantization``), the
  libjpeg quality whose table scales the standard one as the file's does (exact for files libjpeg and
  Pillow wrote; for other encoders, the libjpeg quality with the same typical quantisation step);
- upscaling: how much training enlarges the picture to fill its bucket (from the sizes the scan knows).

The thresholds come from ``benchmarks/quality_thresholds.py`` (measured on textured, drawn, text-like
and noise pictures and their blurred, darkened, brightened and low-quality copies); the report states
each one in its line.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .buckets import Size

ANALYSIS_SIZE = 256  # longer side of the grey copy the figures are measured on
SHARPNESS_TILE = 32  # side of the tiles whose sharpest one gives the sharpness
BLUR_THRESHOLD = 100.0  # sharpest tile's variance of the Laplacian below which a picture counts as blurry
DARK_THRESHOLD = 50.0  # mean luminance (0-255) below which a picture counts as too dark
BRIGHT_THRESHOLD = 200.0  # mean luminance above which, with CLIPPED_WHITE_SHARE clipped, it is too bright
CLIPPED_WHITE_SHARE = 0.10
FLAT_CONTRAST = 4.0  # standard deviation of the luminance below which a picture is flat, not blurry
JPEG_QUALITY_THRESHOLD = 30  # estimated JPEG quality below which the file has heavy artefacts
UPSCALE_LIMIT = 2.0  # enlarged more than this to fill its bucket: far below the training resolution
_BLACK, _WHITE = 5, 250  # luminance at or beyond which a pixel counts as clipped

# The example luminance table of the JPEG standard (ITU T.81 Annex K.1): libjpeg's table at quality 50.
_STANDARD_LUMINANCE = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip


@dataclass(frozen=True)
class ImageQuality:
    """The figures one read of an image leaves for the quality flags."""

    sharpness: float  # variance of the Laplacian at ANALYSIS_SIZE, sharpest SHARPNESS_TILE tile
    brightness: float  # mean luminance 0-255
    clipped_black: float  # share of pixels at or below _BLACK
    clipped_white: float  # share of pixels at or above _WHITE
    contrast: float = 0.0  # standard deviation of the luminance
    jpeg_quality: int | None = None  # estimated; None for other formats


@dataclass(frozen=True)
class QualityFlag:
    """One kind of flaw, its rule as the report states it, and the images that have it."""

    label: str  # the short word on the contact sheet: 'blurry', 'dark', 'bright', 'jpeg', 'small'
    title: str  # 'blurry', 'too dark', ...
    rule: str  # the threshold: 'variance of the Laplacian below 60 at 256 px'
    files: tuple[Path, ...]
    figures: tuple[str, ...]  # each file's own figure, same order
    fix: str


def measure_quality(image: Image.Image, data: bytes | None = None) -> ImageQuality:
    """Sharpness and exposure of a decoded picture; the JPEG quality from ``data`` (the file's bytes)."""
    grey = image.convert("L")
    if max(grey.size) > ANALYSIS_SIZE:
        scale = ANALYSIS_SIZE / max(grey.size)
        size = (max(3, round(grey.width * scale)), max(3, round(grey.height * scale)))
        grey = grey.resize(size, Image.Resampling.BOX)
    pixels = np.asarray(grey)
    counts = np.bincount(pixels.ravel(), minlength=256)  # exposure from one pass over the pixels
    levels = np.arange(256)
    total = max(1, int(counts.sum()))
    mean = float(counts @ levels) / total
    return ImageQuality(
        sharpness=laplacian_variance(pixels.astype(np.float32)),
        brightness=mean,
        clipped_black=float(counts[: _BLACK + 1].sum()) / total,
        clipped_white=float(counts[_WHITE:].sum()) / total,
        contrast=float(np.sqrt(counts @ (levels - mean) ** 2 / total)),
        jpeg_quality=estimate_jpeg_quality(data) if data is not None else None,
    )


def laplacian_variance(pixels: np.ndarray, tile: int = SHARPNESS_TILE) -> float:
    """Variance of the 4-neighbour Laplacian of a 2-D grey array in its sharpest ``tile`` x ``tile`` tile
    (over the whole array when it holds no full tile; 0 when it is under 3 px)."""
    if pixels.shape[0] < 3 or pixels.shape[1] < 3:
        return 0.0
    centre = pixels[1:-1, 1:-1]
    laplacian = pixels[:-2, 1:-1] + pixels[2:, 1:-1] + pixels[1:-1, :-2] + pixels[1:-1, 2:] - 4 * centre
    rows, columns = laplacian.shape[0] // tile, laplacian.shape[1] // tile
    if rows == 0 or columns == 0:
        return float(laplacian.var())
    tiles = laplacian[: rows * tile, : columns * tile].reshape(rows, tile, columns, tile)
    count = tile * tile
    means = tiles.sum(axis=(1, 3)) / count
    squares = np.einsum("ijkl,ijkl->ik", tiles, tiles) / count
    return float((squares - means * means).max())


def estimate_jpeg_quality(data: bytes) -> int | None:
    """The libjpeg quality (1-100) whose luminance table is closest to this JPEG's; None if not a JPEG."""
    if not data.startswith(b"\xff\xd8"):
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            tables = getattr(image, "quantization", None) or {}
    except (OSError, ValueError, SyntaxError):
        return None
    table = tables.get(0)
    if not table or len(table) != 64:
        return None
    # libjpeg's scale factor in percent, from the entries it did not clamp to 1 or 255 (the median; all of
    # them by their sum when every entry is clamped)
    scales = [100.0 * t / s for t, s in zip(table, _STANDARD_LUMINANCE, strict=True) if 1 < t < 255]
    scale = float(np.median(scales)) if scales else 100.0 * sum(table) / sum(_STANDARD_LUMINANCE)
    quality = 5000.0 / scale if scale > 100.0 else (200.0 - scale) / 2.0
    return int(min(100, max(1, round(quality))))


def upscale_factor(size: Size, bucket: Size, center_crop: bool) -> float:
    """How much training enlarges a ``size`` picture into ``bucket`` (cover when cropping, else fit)."""
    ratios = (bucket[0] / size[0], bucket[1] / size[1])
    return max(ratios) if center_crop else min(ratios)


def find_quality_flags(
    measured: Sequence[tuple[Path, ImageQuality | None]],
    sizes: Sequence[tuple[Path, Size, Size]],
    center_crop: bool,
    resolution: int,
) -> tuple[QualityFlag, ...]:
    """The flags that have files, in a fixed order. ``measured``: (path, figures or None when unreadable);
    ``sizes``: (path, original size, bucket)."""
    read = [(path, q) for path, q in measured if q is not None]
    rules = (
        ("blurry", "blurry", f"variance of the Laplacian below {BLUR_THRESHOLD:g} in the sharpest {SHARPNESS_TILE} px "
         f"tile at {ANALYSIS_SIZE} px",
         [(p, f"{q.sharpness:.0f}") for p, q in read if q.sharpness < BLUR_THRESHOLD and q.contrast >= FLAT_CONTRAST],
         "Replace them with sharp pictures or leave them out: the LoRA learns the blur."),
        ("dark", "too dark", f"mean luminance below {DARK_THRESHOLD:g} of 255",
         [(p, f"{q.brightness:.0f}, {q.clipped_black:.0%} black") for p, q in read if q.brightness < DARK_THRESHOLD],
         "Brighten them or leave them out, unless dark pictures are what the LoRA is for."),
        ("bright", "too bright", f"mean luminance above {BRIGHT_THRESHOLD:g} of 255 with at least "
         f"{CLIPPED_WHITE_SHARE:.0%} of pixels clipped to white",
         [(p, f"{q.brightness:.0f}, {q.clipped_white:.0%} white") for p, q in read
          if q.brightness > BRIGHT_THRESHOLD and q.clipped_white >= CLIPPED_WHITE_SHARE],
         "Check their exposure (white backgrounds are fine if that is the style you want)."),
        ("jpeg", "heavy JPEG artefacts", f"estimated JPEG quality below {JPEG_QUALITY_THRESHOLD}, from the "
         "file's quantisation table",
         [(p, f"quality {q.jpeg_quality}") for p, q in read
          if q.jpeg_quality is not None and q.jpeg_quality < JPEG_QUALITY_THRESHOLD],
         "Use better-quality originals: the LoRA learns the 8x8 blocks."),
        ("small", "far below the training resolution", f"enlarged more than {UPSCALE_LIMIT:g}x to fill its bucket "
         f"at resolution {resolution}",
         [(p, f"{s[0]}x{s[1]}, {upscale_factor(s, b, center_crop):.1f}x") for p, s, b in sizes
          if upscale_factor(s, b, center_crop) > UPSCALE_LIMIT],
         "Use larger originals or a lower resolution: upscaled pictures train soft."),
    )  # fmt: skip
    return tuple(
        QualityFlag(label, title, rule, tuple(p for p, _ in hits), tuple(f for _, f in hits), fix)
        for label, title, rule, hits, fix in rules
        if hits
    )


def flag_message(flag: QualityFlag, names: Sequence[str], shown: int = 8) -> str:
    """'Blurry: 2 image(s) (variance of the Laplacian below 100 ...): a.png (12), b.png (31). Fix.'
    ``names`` are the files as the report names them (relative to the dataset)."""
    listed = ", ".join(f"{name} ({figure})" for name, figure in zip(names[:shown], flag.figures[:shown], strict=False))
    more = f" and {len(flag.files) - shown} more" if len(flag.files) > shown else ""
    return f"{flag.title[0].upper()}{flag.title[1:]}: {len(flag.files)} image(s) ({flag.rule}): {listed}{more}. {flag.fix}"


def flag_labels(flags: Sequence[QualityFlag]) -> dict[Path, list[str]]:
    """Each flagged file's short labels, for the contact sheet."""
    labels: dict[Path, list[str]] = {}
    for flag in flags:
        for path in flag.files:
            labels.setdefault(path, []).append(flag.label)
    return labels
