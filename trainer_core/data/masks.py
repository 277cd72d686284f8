"""Loss masks: which pixels of a training image the loss counts (kohya's masked loss).

An image's mask is, in this order of precedence:

1. a file ``<name>_mask.png`` beside ``<name>.<ext>`` (any image extension Load Dataset reads): a
   greyscale picture, white = train on these pixels, black = ignore them, grey = in between. A file
   with a varying alpha channel uses that alpha instead; an RGB file counts when it is grey (R = G = B).
   A file is taken as a mask only when its image sits beside it: ``face_mask.png`` alone is a
   training image. Mask files are never training images themselves.
2. the image's own alpha channel (RGBA or LA images): opaque = train, transparent = ignore.

A mask file that is a colour picture or cannot be read is left out (its image trains without a
mask) and named in the report; one of another size than its image is resized to it, with a warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from .dataset_folder import find_mask_file, inside
from .image_files import (
    ImageFileError,
    ImageHeader,
    Size,
    _open,
    read_header,
    resize_to_bucket,
)

ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_GREY_MODES = ("1", "L", "I", "I;16", "I;16L", "I;16B", "F")


def mask_of(
    image_path: Path, header: ImageHeader, listings: dict[Path, list[str]], warnings: list[str],
    bad_masks: dict[Path, str], confine_to: Sequence[Path] = (),
) -> tuple[Path | None, bool]:
    """(the image's usable mask file or None, whether its own alpha channel is its mask). A mask file
    that cannot be used goes into ``bad_masks`` (path -> why) and the image is treated as without it."""
    mask = find_mask_file(image_path, listings)
    if mask is not None and confine_to and not inside(mask, confine_to):
        warnings.append(f"skipped mask {mask}: a link that leads out of the folders this server may read")
        mask = None
    if mask is not None:
        problem, warning = check_mask_file(mask, header)
        if problem is None:
            if warning:
                warnings.append(warning)
            return mask, False
        bad_masks[mask] = problem
    return None, header.mode in ALPHA_MODES


def masks_note(items: Sequence[Any], masked_loss: bool) -> str | None:
    """Before training: an error when ``masked_loss`` is on and no image has a mask; a note when masks
    exist but ``masked_loss`` is off (they are then ignored)."""
    masked = sum(1 for item in items if item.mask_path is not None or item.alpha_mask)
    if masked_loss and not masked:
        raise ValueError(
            "masked_loss is on (LoRA Lab Loss Settings), but no image has a mask: put a greyscale <name>_mask.png "
            "beside each image (white = train, black = ignore) or give the images an alpha channel, and run Load "
            "Dataset again; or turn masked_loss off."
        )
    if masked and not masked_loss:
        return (f"{masked} image(s) have a loss mask (<name>_mask file or alpha channel), but masked_loss is off "
                "(LoRA Lab Loss Settings): they train on every pixel.")
    return None


def check_mask_file(mask_path: Path, image: ImageHeader) -> tuple[str | None, str | None]:
    """(why the mask cannot be used, or None; a warning about it, or None). Reads the header, and the
    pixels only for colour-mode files (to tell a grey picture saved as RGB from a colour one)."""
    try:
        header = read_header(mask_path)
        if header.mode not in _GREY_MODES and header.mode not in ("LA", "La") and not _is_grey_or_alpha(mask_path):
            return ("a colour picture, not a greyscale or alpha mask: save it in greyscale (white = train, "
                    "black = ignore)"), None
    except ImageFileError as error:
        return error.reason, None
    except (OSError, ValueError, SyntaxError, EOFError) as error:  # pixels Pillow cannot decode
        return f"is truncated or damaged and cannot be decoded ({error})", None
    if header.size != image.size:
        return None, (f"mask {mask_path} is {header.size[0]}x{header.size[1]}, its image {image.size[0]}x"
                      f"{image.size[1]}: resized to the image's size")
    return None, None


def load_mask(path: Path, size: Size, bucket: Size, center_crop: bool, alpha_of_image: bool = False) -> np.ndarray:
    """The mask as float32 HxW in [0, 1] at ``bucket`` size, cut and scaled as its image is (``size`` is
    the image's). ``alpha_of_image``: ``path`` is the image and its alpha channel is the mask. Padding
    (``center_crop`` off) is masked out: it is not part of the picture."""
    with _open(path) as opened:
        upright = ImageOps.exif_transpose(opened)
        grey = upright.convert("RGBA").getchannel("A") if alpha_of_image else _mask_channel(upright)
    if grey.size != size:
        grey = grey.resize(size, Image.Resampling.BILINEAR)
    fitted = resize_to_bucket(grey.convert("RGB"), bucket, center_crop, (0, 0, 0))
    return np.clip(np.asarray(fitted, dtype=np.float32)[..., 0] / np.float32(255.0), 0.0, 1.0)


def mask_thumbnail(path: Path, size: Size, alpha_of_image: bool = False) -> Image.Image:
    """The mask (or the image's alpha) as an 'L' picture of ``size``, for the contact sheet."""
    with _open(path) as opened:
        opened.draft("L", size)
        upright = ImageOps.exif_transpose(opened)
        grey = upright.convert("RGBA").getchannel("A") if alpha_of_image else _mask_channel(upright)
    return grey.resize(size, Image.Resampling.BILINEAR)


def _mask_channel(image: Image.Image) -> Image.Image:
    """A mask file's values as 'L': its alpha when that varies, else its grey."""
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema() != (255, 255):
            return alpha
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        top = 1.0 if image.mode == "F" and values.max(initial=0) <= 1.0 else top
        return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return image.convert("L")


def _is_grey_or_alpha(path: Path) -> bool:
    with _open(path) as image:
        image.load()
        if image.mode in ALPHA_MODES or "transparency" in image.info:
            if image.convert("RGBA").getchannel("A").getextrema() != (255, 255):
                return True
        rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
