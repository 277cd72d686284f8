"""Pictures for the quality flags' tests: a sharp, well-exposed one and the usual bad copies of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter


def sharp_picture(size: tuple[int, int] = (384, 256), seed: int = 0) -> Image.Image:
    """Shapes with hard edges and a line of text on a grey gradient, with a little grain: mean luminance
    near the middle, sharp at any size."""
    rng = np.random.default_rng(seed)
    width, height = size
    ramp = np.linspace(70, 190, width)[None, :, None] * np.ones((height, 1, 3))
    image = Image.fromarray(ramp.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(10):
        x0, y0 = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height * 3 // 4))
        box = (x0, y0, x0 + int(rng.integers(width // 10, width // 3)), y0 + int(rng.integers(height // 10, height // 3)))
        colour = tuple(int(c) for c in rng.integers(40, 220, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    draw.text((8, height // 2), "the quick brown fox jumps over the lazy dog", fill=(20, 20, 20))
    grain = rng.normal(0, 2.0, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + grain, 0, 255).astype(np.uint8))


def blurred(image: Image.Image, radius: float = 4.0) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius))


def brightness(image: Image.Image, factor: float) -> Image.Image:
    """x0.3 darkens a picture like an underexposed photo; x2.2 burns its light parts out to white."""
    return ImageEnhance.Brightness(image).enhance(factor)


def save(image: Image.Image, path: Path, **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path
