"""Small generated datasets with a visual concept and a trigger word, for the tests and the demo.

Nothing is downloaded: each image is drawn with Pillow from a seed.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 40),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]
) -> None:
    x0, y0, x1, y1 = box
    if shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        width = max(2, (x1 - x0) // 5)
        draw.ellipse(box, outline=colour, width=width)
    elif shape == "cross":
        w = max(2, (x1 - x0) // 4)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle((cx - w // 2, y0, cx + w // 2, y1), fill=colour)
        draw.rectangle((x0, cy - w // 2, x1, cy + w // 2), fill=colour)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}: use square, circle, ring, cross or triangle")


def make_shapes_dataset(
    folder: Path,
    count: int = 8,
    size: int = 64,
    shape: str = "ring",
    colour: str = "yellow",
    background: str = "blue",
    trigger_word: str = "sks",
    seed: int = 0,
) -> Path:
    """``count`` PNGs of one shape at random places and sizes, each with a ``.txt`` caption
    ``"<trigger>, a <colour> <shape> on a <background> background"``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for index in range(count):
        image = Image.new("RGB", (size, size), COLOURS[background])
        side = rng.randint(size // 2, size * 3 // 4)
        x, y = rng.randint(0, size - side), rng.randint(0, size - side)
        draw_shape(ImageDraw.Draw(image), shape, (x, y, x + side, y + side), COLOURS[colour])
        image.save(folder / f"{index:03d}.png")
        caption = f"{trigger_word}, a {colour} {shape} on a {background} background"
        (folder / f"{index:03d}.txt").write_text(caption, encoding="utf-8")
    return folder
