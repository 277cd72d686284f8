"""Where the dataset quality flags' thresholds come from: the figures of varied pictures and bad copies.

    .venv/bin/python benchmarks/quality_thresholds.py [--side 768]

No photographs are available here, so the pictures are made to look like what datasets hold: 1/f
("pink") noise textures (the spectrum of natural photographs), drawn shapes on a gradient with a little
sensor noise, text on paper, a landscape (sky gradient over a textured ground), stripes, and a smooth
low-detail picture. Each is measured as it is and as copies made the usual bad ways: Gaussian blur of
radius 1-4 px at full size, brightness x0.3 / x0.5 / x1.6 / x2.0, and JPEG qualities 95 to 5 (with the
PSNR of the JPEG against the original, to see where the artefacts become heavy). The figures are
``trainer_core.data.quality.measure_quality``'s: what the report measures. Prints a table per measure.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer_core.data.quality import measure_quality  # noqa: E402


def pink_noise(rng: np.random.Generator, side: int) -> Image.Image:
    """A texture with a 1/f amplitude spectrum, in colour."""
    height, width = side * 2 // 3, side
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.fftfreq(width)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / side)
    channels = []
    for _ in range(3):
        phase = np.exp(2j * np.pi * rng.random((height, width)))
        field = np.real(np.fft.ifft2(amplitude * phase))
        channels.append((field - field.mean()) / field.std())
    pixels = np.clip(128 + 40 * np.stack(channels, axis=-1), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def shapes(rng: np.random.Generator, side: int, grain: float = 3.0) -> Image.Image:
    height = side * 2 // 3
    ramp = np.linspace(60, 200, side)[None, :, None] * np.ones((height, 1, 3))
    image = Image.fromarray(ramp.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.integers(0, side - 40), rng.integers(0, height - 40)
        box = (x0, y0, x0 + rng.integers(20, side // 3), y0 + rng.integers(20, height // 3))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return with_grain(rng, image, grain) if grain else image


def cartoon(rng: np.random.Generator, side: int) -> Image.Image:
    """Flat colours with hard edges and no grain (drawings, anime screenshots)."""
    return shapes(rng, side, grain=0.0)


def text_page(rng: np.random.Generator, side: int) -> Image.Image:
    image = Image.new("RGB", (side, side * 2 // 3), (235, 230, 220))
    draw = ImageDraw.Draw(image)
    letters = "abcdefghijklmnopqrstuvwxyz     "
    for row in range(4, image.height - 20, 22):
        line = "".join(letters[int(i)] for i in rng.integers(0, len(letters), side // 7))
        draw.text((10, row), line, fill=(30, 30, 40))
    return image


def landscape(rng: np.random.Generator, side: int) -> Image.Image:
    height = side * 2 // 3
    sky = np.linspace([90, 140, 220], [200, 220, 240], height // 2)[:, None, :] * np.ones((1, side, 1))
    ground = np.asarray(pink_noise(rng, side).resize((side, height - height // 2)), dtype=np.float64)
    ground = ground * np.array([0.5, 0.8, 0.4])
    return with_grain(rng, Image.fromarray(np.concatenate([sky, ground]).astype(np.uint8)), 2.0)


def stripes(rng: np.random.Generator, side: int) -> Image.Image:
    height = side * 2 // 3
    x = np.arange(side)[None, :] + np.arange(height)[:, None] * rng.uniform(0.2, 0.8)
    pixels = np.where((x // rng.integers(6, 20)) % 2 == 0, 200, 50).astype(np.uint8)
    return Image.fromarray(pixels).convert("RGB")


def smooth(rng: np.random.Generator, side: int) -> Image.Image:
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((side, side * 2 // 3), Image.Resampling.BICUBIC)


def with_grain(rng: np.random.Generator, image: Image.Image, sigma: float) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float64) + rng.normal(0, sigma, (image.height, image.width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


PICTURES: dict[str, Callable[[np.random.Generator, int], Image.Image]] = {
    "pink noise": pink_noise, "shapes": shapes, "cartoon": cartoon, "text": text_page, "landscape": landscape,
    "stripes": stripes, "smooth": smooth,
}  # fmt: skip


def jpeg_copy(image: Image.Image, quality: int) -> tuple[bytes, Image.Image]:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    data = buffer.getvalue()
    return data, Image.open(io.BytesIO(data)).convert("RGB")


def psnr(a: Image.Image, b: Image.Image) -> float:
    error = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(error, 1e-9)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=768)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    originals = {name: make(rng, args.side) for name, make in PICTURES.items()}
    print(f"pictures {args.side} px wide; figures as the report measures them\n")
    print("variance of the Laplacian: original, then Gaussian blur of radius 1, 2, 3, 4 px")
    for name, image in originals.items():
        blurred = [measure_quality(image.filter(ImageFilter.GaussianBlur(r))).sharpness for r in (1, 2, 3, 4)]
        print(f"  {name:<11} {measure_quality(image).sharpness:9.0f} | " + " ".join(f"{v:8.1f}" for v in blurred))
    print("\nmean luminance (share clipped black / white): original, then brightness x0.3, x0.5, x1.6, x2.0")
    for name, image in originals.items():
        cells = []
        for factor in (1.0, 0.3, 0.5, 1.6, 2.0):
            q = measure_quality(ImageEnhance.Brightness(image).enhance(factor))
            cells.append(f"{q.brightness:5.0f} ({q.clipped_black:4.0%}/{q.clipped_white:4.0%})")
        print(f"  {name:<11} " + " ".join(cells))
    qualities = (95, 75, 50, 40, 30, 20, 10, 5)
    print("\nJPEG: estimated quality / PSNR dB against the original, at Pillow qualities " + ", ".join(map(str, qualities)))
    for name, image in originals.items():
        cells = []
        for quality in qualities:
            data, decoded = jpeg_copy(image, quality)
            cells.append(f"{measure_quality(decoded, data).jpeg_quality:3d}/{psnr(image, decoded):4.1f}")
        print(f"  {name:<11} " + " ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
