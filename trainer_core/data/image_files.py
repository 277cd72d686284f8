"""Reading training images safely: headers for the scan, pixels only when asked.

``read_header`` opens a file just far enough to know its size and orientation (Pillow reads pixels
lazily) and rejects what would break training later: empty, non-image, truncated files and images
over Pillow's decompression-bomb limit. ``decode_rgb`` turns whatever Pillow opens (palette, grey,
16-bit, CMYK, alpha) into upright 8-bit RGB with transparency flattened onto a background colour.
Every error is an ``ImageFileError`` whose message names the file and what to do about it.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor, UnidentifiedImageError

Size = tuple[int, int]
Color = tuple[int, int, int]

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

# Errors Pillow and its codecs raise for damaged data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError)

_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112
FALLBACK_MAX_PIXELS = 89_478_485  # Pillow's default limit, used when Image.MAX_IMAGE_PIXELS is None
_TAIL_BYTES = 4096


class ImageFileError(ValueError):
    """An image that cannot be used; the message names the file, the reason and the fix."""

    def __init__(self, path: Path, reason: str, fix: str = "") -> None:
        self.path = Path(path)
        self.reason = reason
        fix = (
            fix or "Re-export or re-download it, or delete it; set on_bad_file to 'skip' to train without it."
        )
        super().__init__(f"{self.path}: {reason}. {fix}")


@dataclass(frozen=True)
class ImageHeader:
    """What the scan learns about an image without decoding its pixels."""

    size: Size  # (width, height) as the image is seen, after EXIF orientation
    stored_size: Size  # (width, height) as stored in the file
    format: str  # Pillow's format name: PNG, JPEG, WEBP, ...
    mode: str  # Pillow's mode as stored: RGB, RGBA, P, I;16, CMYK, ...
    orientation: int  # EXIF orientation 1..8 (1 = upright)


def parse_color(text: str) -> Color:
    """An RGB colour from a name or hex code ('white', '#808080', '#fff'); raises ValueError."""
    try:
        rgb = ImageColor.getrgb(text.strip())
    except ValueError as error:
        raise ValueError(
            f"background colour {text!r} is not a colour: use a name like 'white' or 'black', or a hex code like '#808080'"
        ) from error
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def nonempty_size(path: Path) -> int:
    """The file's size in bytes; raises ``ImageFileError`` when it cannot be looked at or holds no bytes."""
    try:
        byte_count = path.stat().st_size
    except OSError as error:
        raise ImageFileError(path, f"cannot be read ({error.strerror or error})") from error
    if byte_count == 0:
        raise ImageFileError(path, "is empty (0 bytes)")
    return byte_count


def read_header(path: Path) -> ImageHeader:
    """Size, format and orientation of an image file, reading only its header (and its last bytes).

    Raises ``ImageFileError`` for empty, unreadable, non-image, oversized or truncated files.
    """
    path = Path(path)
    byte_count = nonempty_size(path)
    with _open(path) as image:
        orientation = _orientation(image)
        header = ImageHeader(
            size=_oriented_size(image.size, orientation),
            stored_size=image.size,
            format=str(image.format or "?"),
            mode=image.mode,
            orientation=orientation,
        )
    if _tail_looks_truncated(path, header.format, byte_count):
        # Cheap test failed; some cameras append data after the image (motion photos), so decode
        # at the smallest scale to be sure before calling the file truncated.
        decode_rgb(path, (255, 255, 255), draft_size=(1, 1))
    return header


def decode_rgb(
    path: Path, background: Color, draft_size: Size | None = None, data: bytes | None = None
) -> Image.Image:
    """The image upright, as 8-bit RGB, transparency flattened onto ``background``.

    ``draft_size`` (width, height as seen after orientation) lets JPEG decode at a reduced scale that
    is still at least that large: much faster when the image is going to be shrunk anyway. ``data``
    is the file's bytes when the caller has already read them (``path`` then only names the file).
    """
    path = Path(path)
    with _open(path, data) as image:
        orientation = _orientation(image)
        if draft_size is not None and image.format == "JPEG":
            stored_draft = draft_size if orientation < 5 else (draft_size[1], draft_size[0])
            image.draft(image.mode, stored_draft)
        try:
            image.load()
            rgb = to_rgb(image, background)
        except _DECODE_ERRORS as error:
            raise ImageFileError(path, f"is truncated or damaged and cannot be decoded ({error})") from error
    transpose = _TRANSPOSE_FOR_ORIENTATION.get(orientation)
    return rgb.transpose(transpose) if transpose is not None else rgb


def resize_to_bucket(image: Image.Image, bucket: Size, center_crop: bool, background: Color) -> Image.Image:
    """``image`` at exactly ``bucket`` size, never stretched.

    ``center_crop``: scale to cover the bucket and cut the overflow equally from both sides.
    Otherwise scale to fit inside and pad the rest with ``background`` (nothing is cut off).
    """
    width, height = image.size
    target_w, target_h = bucket
    if (width, height) == bucket:
        return image
    if center_crop:
        scale = max(target_w / width, target_h / height)
        crop_w, crop_h = target_w / scale, target_h / scale
        left, top = (width - crop_w) / 2, (height - crop_h) / 2
        box = (left, top, left + crop_w, top + crop_h)
        return image.resize(bucket, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    scale = min(target_w / width, target_h / height)
    fitted_size = (min(target_w, max(1, round(width * scale))), min(target_h, max(1, round(height * scale))))
    fitted = image.resize(fitted_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    canvas = Image.new("RGB", bucket, background)
    canvas.paste(fitted, ((target_w - fitted_size[0]) // 2, (target_h - fitted_size[1]) // 2))
    return canvas


def to_float_array(image: Image.Image) -> np.ndarray:
    """An RGB image as a float32 HxWx3 array in [0, 1]."""
    return np.asarray(image.convert("RGB"), dtype=np.float32) / np.float32(255.0)


def _open(path: Path, data: bytes | None = None) -> Image.Image:
    """``Image.open`` with its failures turned into messages a person can act on."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data) if data is not None else path)
    except Image.DecompressionBombError as error:
        raise ImageFileError(
            path,
            f"is too large to decode safely, over Pillow's decompression-bomb limit ({error})",
            _BOMB_FIX,
        ) from error
    except UnidentifiedImageError as error:
        raise ImageFileError(
            path, "is not an image Pillow can read (damaged, or another kind of file with an image extension)"
        ) from error
    except _DECODE_ERRORS as error:
        raise ImageFileError(path, f"cannot be opened ({error})") from error
    # Another custom node may have switched Pillow's guard off (None); training never needs more.
    limit = Image.MAX_IMAGE_PIXELS or FALLBACK_MAX_PIXELS
    width, height = image.size
    if width * height > limit:
        image.close()
        raise ImageFileError(
            path,
            f"is {width}x{height} = {width * height:,} pixels, over the {limit:,}-pixel "
            "decompression-bomb limit (Pillow's)",
            _BOMB_FIX,
        )
    if width < 1 or height < 1:
        image.close()
        raise ImageFileError(path, f"has no pixels ({width}x{height})")
    return image


_BOMB_FIX = (
    "Downscale it (training uses at most a few megapixels: 2048 px on the long side is plenty) or remove it; "
    "set on_bad_file to 'skip' to train without it."
)


def _orientation(image: Image.Image) -> int:
    """EXIF orientation without decoding pixels (PNG's ``getexif`` would load the whole image)."""
    try:
        if image.format == "PNG":
            raw = image.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = image.getexif()
        value = int(exif.get(_EXIF_ORIENTATION_TAG, 1))
    except (*_DECODE_ERRORS, KeyError, TypeError):
        return 1  # unreadable EXIF: treat the image as upright rather than reject it
    return value if 1 <= value <= 8 else 1


def _oriented_size(size: Size, orientation: int) -> Size:
    return (size[1], size[0]) if orientation >= 5 else size


def _tail_looks_truncated(path: Path, image_format: str, byte_count: int) -> bool:
    """A cheap check of the file's last bytes for the end marker PNG / JPEG / WebP must have."""
    if image_format not in ("PNG", "JPEG", "WEBP"):
        return False
    with open(path, "rb") as file:
        if image_format == "WEBP":
            head = file.read(8)
            declared = struct.unpack("<I", head[4:8])[0] + 8 if len(head) == 8 else 0
            return declared > byte_count
        file.seek(max(0, byte_count - _TAIL_BYTES))
        tail = file.read()
    marker = b"IEND" if image_format == "PNG" else b"\xff\xd9"
    return marker not in tail


def to_rgb(image: Image.Image, background: Color) -> Image.Image:
    """Any Pillow image (palette, grey, 16-bit, alpha) as 8-bit RGB, transparency flattened onto ``background``."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        # 16/32-bit grey: Pillow's convert would clip at 255 (an almost white image), so rescale.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        grey = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(values * scale + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info)
    if mode == "L" and "transparency" in image.info:
        has_alpha = True
    if has_alpha:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode == "RGB":
        return image.copy()
    return image.convert("RGB")
