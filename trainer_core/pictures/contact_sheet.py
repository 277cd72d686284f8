"""A contact sheet: the dataset's pictures at a glance, with the report's findings marked.

Thumbnails come from the report (read once, at most ``ReportOptions.sheet_images`` of them), so the
sheet costs no extra decoding. Each cell shows the picture fitted into a square, its number and
training size; a red frame marks damaged or duplicated images, an orange one images without a
caption or smaller than their training size, a magenta one (inside the other when there is one) images
with a quality flag (``data.quality``), whose short names ('blurry', 'dark', 'bright', 'jpeg', 'small')
are written on the picture. Where an image has a loss mask (``data.masks``), the pixels the loss ignores
are tinted blue and its label ends in 'mask'. A clip's cell shows a strip of frames from its trained
window (first to last) labelled with the clip's length, rate and size ('2.1 s · 24 fps · 640x360'); its
label gives the window's frame count ('17f'). A legend under the cells says what each colour means.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data.clip_report import clip_label
from ..data.dataset import Dataset, DatasetItem
from ..data.dataset_report import DatasetReport
from ..data.image_files import ImageFileError
from ..data.masks import mask_thumbnail
from ..data.quality import flag_labels

RED = (220, 40, 40)
ORANGE = (240, 150, 20)
MAGENTA = (230, 40, 230)  # quality flags
_BACKGROUND = (32, 32, 32)
_TEXT = (230, 230, 230)
_LABEL_HEIGHT = 16
_GAP = 4
_FRAME = 3
_HEADER_HEIGHT = 22
MASKED_TINT = (40, 70, 200)  # over the pixels a loss mask leaves out


def render_contact_sheet(dataset: Dataset, report: DatasetReport, columns: int = 0) -> np.ndarray:
    """The sheet as a float32 HxWx3 array in [0, 1] (what ComfyUI's IMAGE holds per picture)."""
    return np.asarray(contact_sheet_image(dataset, report, columns), dtype=np.float32) / np.float32(255.0)


def contact_sheet_image(dataset: Dataset, report: DatasetReport, columns: int = 0) -> Image.Image:
    """The sheet as a PIL image; ``columns`` 0 = about square."""
    count = len(report.sheet_items)
    cell = report.thumbnails[0].width if count else 64
    cell = max(
        cell,
        max((t.width for t in report.thumbnails), default=cell),
        max((t.height for t in report.thumbnails), default=cell),
    )
    columns = columns or max(1, min(12, math.ceil(math.sqrt(max(count, 1)))))
    rows = max(1, math.ceil(count / columns))
    width = max(320, columns * (cell + _GAP) + _GAP)
    font = _font()
    legend = _legend_layout(report, width, font)
    grid_bottom = _HEADER_HEIGHT + rows * (cell + _LABEL_HEIGHT + _GAP)
    height = grid_bottom + _GAP + (max(y for *_, y in legend) + _LABEL_HEIGHT if legend else 0)
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    shown = f"showing {count} of {report.image_count}" if count < report.image_count else f"{count} images"
    header = (
        f"{shown} | {len(report.bucket_histogram)} buckets | "
        f"{len(report.errors)} errors | {len(report.warnings)} warnings"
    )
    clips = {item.image_path for item in dataset.items if item.clip is not None}
    if clips:
        header += f" | {len(clips)} clips"
    if report.mask_files or report.alpha_masks:
        header += f" | {len(report.mask_files) + len(report.alpha_masks)} masks (blue = not trained)"
    draw.text((_GAP, 4), header, fill=_TEXT, font=font)

    red, orange = _marked_paths(report)
    flagged = flag_labels(report.quality_flags)
    for position, (index, thumbnail) in enumerate(zip(report.sheet_items, report.thumbnails, strict=True)):
        item = dataset.items[index]
        left = _GAP + (position % columns) * (cell + _GAP)
        top = _HEADER_HEIGHT + (position // columns) * (cell + _LABEL_HEIGHT + _GAP)
        thumbnail, masked = _with_mask(thumbnail, item)
        sheet.paste(thumbnail, (left + (cell - thumbnail.width) // 2, top + (cell - thumbnail.height) // 2))
        colour = RED if item.image_path in red else ORANGE if item.image_path in orange else None
        if colour is not None:
            draw.rectangle((left, top, left + cell - 1, top + cell - 1), outline=colour, width=_FRAME)
        if item.image_path in flagged:
            inset = _FRAME if colour is not None else 0
            box = (left + inset, top + inset, left + cell - 1 - inset, top + cell - 1 - inset)
            draw.rectangle(box, outline=MAGENTA, width=_FRAME)
            labels = flagged[item.image_path]
            text = " ".join(labels)
            if len(labels) > 1 and font.getlength(text) > box[2] - box[0] - 2 * _FRAME - 4:
                text = f"{labels[0]} +{len(labels) - 1}"  # the rest are in the report
            corner = (box[0] + _FRAME, box[1] + _FRAME)
            draw.rectangle((*corner, corner[0] + font.getlength(text) + 3, corner[1] + 12), fill=MAGENTA)
            draw.text((corner[0] + 2, corner[1]), text, fill=(0, 0, 0), font=font)
        label = f"#{index + 1} {item.bucket[0]}x{item.bucket[1]}" + (" mask" if masked else "")
        if item.clip is not None:
            label += f" {item.frames}f"
            _label_strip(draw, font, item, (left, top + (cell + thumbnail.height) // 2 + 2), cell)
        draw.text((left + 1, top + cell + 2), label, fill=colour or _TEXT, font=font)
    for colour, text, x, y in legend:
        draw.rectangle((x, grid_bottom + y + 2, x + 9, grid_bottom + y + 11), fill=colour)
        draw.text((x + 13, grid_bottom + y), text, fill=_TEXT, font=font)
    return sheet


def _label_strip(draw: ImageDraw.ImageDraw, font, item: DatasetItem, at: tuple[int, int], width: int) -> None:
    """The clip's length, rate and size under its frame strip (the compact form when the full one is too wide)."""
    text = clip_label(item)
    if draw.textlength(text, font=font) > width - 2:
        text = clip_label(item, compact=True)
    draw.text((at[0] + 1, at[1]), text, fill=_TEXT, font=font)


def _legend_layout(
    report: DatasetReport, width: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont
) -> list[tuple[tuple[int, int, int], str, int, int]]:
    """(colour, text, x, y) of each legend entry, wrapped to ``width``; y counts from the grid's bottom."""
    entries = [
        (RED, "damaged or duplicate"),
        (ORANGE, "no caption or upscaled"),
        (MAGENTA, "quality: blurry, dark, bright, jpeg, small"),
    ]
    if report.mask_files or report.alpha_masks:
        entries.append((MASKED_TINT, "not trained (mask)"))
    layout: list[tuple[tuple[int, int, int], str, int, int]] = []
    x, y = _GAP, 0
    for colour, text in entries:
        entry_width = 13 + int(font.getlength(text)) + 10
        if x > _GAP and x + entry_width > width:
            x, y = _GAP, y + _LABEL_HEIGHT
        layout.append((colour, text, x, y))
        x += entry_width
    return layout


def _with_mask(thumbnail: Image.Image, item: DatasetItem) -> tuple[Image.Image, bool]:
    """The thumbnail with what its loss mask leaves out tinted, and whether it has a mask that does."""
    if item.mask_path is None and not item.alpha_mask:
        return thumbnail, False
    try:
        mask = mask_thumbnail(item.mask_path or item.image_path, thumbnail.size, item.mask_path is None)
    except (ImageFileError, OSError):
        return thumbnail, False
    if mask.getextrema() == (255, 255):  # an opaque alpha channel leaves nothing out
        return thumbnail, False
    tinted = Image.blend(thumbnail.convert("RGB"), Image.new("RGB", thumbnail.size, MASKED_TINT), 0.6)
    return Image.composite(thumbnail.convert("RGB"), tinted, mask), True


def _marked_paths(report: DatasetReport) -> tuple[set, set]:
    red = set(report.damaged)
    for group in (*report.exact_duplicates, *report.near_duplicates):
        red.update(group)
    orange = set(report.without_caption) | set(report.below_resolution)
    return red, orange


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=11)
    except (OSError, TypeError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()
