"""Labelled image grids: a header, column labels on top, row labels on the left."""

from __future__ import annotations

import textwrap
from collections.abc import Collection, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
ERROR_TILE = (120, 20, 20)
MARK = (30, 180, 60)  # the frame around a marked cell (the sweep's recommended strength)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _to_image(cell: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(cell, 0, 1) * 255).round().astype(np.uint8)[..., :3])


def error_tile(width: int, height: int, message: str) -> np.ndarray:
    """A dark red cell with the reason, for a cell that could not be rendered."""
    image = Image.new("RGB", (width, height), ERROR_TILE)
    draw = ImageDraw.Draw(image)
    font = _font(max(8, min(14, width // 12)))
    lines = textwrap.wrap(message, width=max(8, width // 7))[: max(1, height // 14)]
    draw.multiline_text((4, 4), "\n".join(lines), fill=(255, 255, 255), font=font)
    return np.asarray(image, dtype=np.float32) / 255.0


def labelled_grid(
    cells: Sequence[Sequence[np.ndarray]],
    column_labels: Sequence[str],
    row_labels: Sequence[str],
    header: Sequence[str] = (),
    gap: int = 4,
    marked: Collection[tuple[int, int]] = (),
) -> np.ndarray:
    """``cells[row][column]`` float HxWx3 arrays (0..1) of one size, laid out with labels; each
    (row, column) in ``marked`` gets a green frame (in the gap around it, over its outer pixel).

    Returns a float32 RGB array in 0..1.
    """
    rows, columns = len(cells), len(cells[0]) if cells else 0
    if rows == 0 or columns == 0:
        raise ValueError("a grid needs at least one cell")
    height, width = cells[0][0].shape[:2]
    font_size = max(10, min(24, width // 10))
    font = _font(font_size)
    line = font_size + 4
    label_width = max(width, 160)
    wrap = max(10, int(label_width / (font_size * 0.55)))
    row_text = ["\n".join(textwrap.wrap(label, width=wrap)[: max(1, height // line)]) for label in row_labels]
    header_height = line * len(header) + (gap if header else 0)
    top = header_height + line + gap
    total_width = label_width + gap + columns * (width + gap)
    total_height = top + rows * (height + gap)
    canvas = Image.new("RGB", (total_width, total_height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for index, text in enumerate(header):
        draw.text((gap, gap // 2 + index * line), text, fill=INK, font=font)
    for column, label in enumerate(column_labels):
        x = label_width + gap + column * (width + gap)
        text_width = draw.textlength(label, font=font)
        draw.text((x + max(0, (width - text_width) / 2), header_height), label, fill=INK, font=font)
    for row in range(rows):
        y = top + row * (height + gap)
        draw.multiline_text((gap, y + 2), row_text[row], fill=INK, font=font)
        for column in range(columns):
            x = label_width + gap + column * (width + gap)
            canvas.paste(_to_image(cells[row][column]), (x, y))
    for row, column in marked:
        x, y = label_width + gap + column * (width + gap), top + row * (height + gap)
        draw.rectangle((x - gap // 2 - 1, y - gap // 2 - 1, x + width + gap // 2, y + height + gap // 2), outline=MARK,
                       width=gap // 2 + 1)
    return np.asarray(canvas, dtype=np.float32) / 255.0
