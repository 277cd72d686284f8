"""LoadDataset's core, what training gets of each image: its pixels (EXIF orientation, alpha, colour
modes, decoded only when loaded) and its bucket (kohya's rules, cover-crop or padding)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from tests.core.test_dataset import SMALL, make_image, write_png
from trainer_core.data.buckets import make_buckets
from trainer_core.data.dataset import Dataset, DatasetOptions, load_dataset

# --- pixels ------------------------------------------------------------------------------------


def _pixel(dataset: Dataset, index: int = 0) -> np.ndarray:
    image = dataset.load_image(dataset.items[index])
    return image[image.shape[0] // 2, image.shape[1] // 2]


def test_exif_orientation_is_applied_to_size_and_pixels(tmp_path: Path) -> None:
    # Stored 96 wide x 64 high, left half red; orientation 6 means "rotate 90° clockwise to view".
    image = Image.new("RGB", (96, 64), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 48, 64))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image.save(tmp_path / "rotated.png", exif=exif)
    dataset = load_dataset(tmp_path, DatasetOptions(resolution=64, bucket_step=8, enable_bucketing=False))
    for item in dataset.items:
        assert item.size == (64, 96)
        pixels = dataset.load_image(item)
        assert pixels[2, 32, 0] > 0.8 and pixels[2, 32, 2] < 0.2  # the red half is now on top
        assert pixels[-3, 32, 2] > 0.8 and pixels[-3, 32, 0] < 0.2


def test_alpha_is_flattened_onto_the_background(tmp_path: Path) -> None:
    make_image(tmp_path / "clear.png", mode="RGBA", color=(0, 255, 0, 0))
    make_image(tmp_path / "half.webp", mode="RGBA", color=(0, 0, 0, 128), lossless=True)
    make_image(tmp_path / "grey_alpha.png", mode="LA", color=(0, 0))
    palette = Image.new("P", (64, 64), 0)
    palette.putpalette([10, 20, 30] * 256)
    palette.save(tmp_path / "palette.png", transparency=0)
    options = DatasetOptions(resolution=64, bucket_step=8, background=(255, 0, 0))
    dataset = load_dataset(tmp_path, options)
    by_name = {item.image_path.name: index for index, item in enumerate(dataset.items)}
    for name in ("clear.png", "grey_alpha.png", "palette.png"):
        assert np.allclose(_pixel(dataset, by_name[name]), [1, 0, 0], atol=0.01), name
    assert np.allclose(_pixel(dataset, by_name["half.webp"]), [0.5, 0, 0], atol=0.02)


def test_colour_modes_become_rgb_with_the_right_brightness(tmp_path: Path) -> None:
    make_image(tmp_path / "cmyk.jpg", mode="CMYK", color=(0, 255, 255, 0), quality=95)  # red
    make_image(tmp_path / "grey.png", mode="L", color=128)
    make_image(tmp_path / "bilevel.bmp", mode="1", color=1)
    mid_grey = np.full((16, 16), 32768, dtype=np.uint16)
    Image.fromarray(mid_grey).save(tmp_path / "grey16.png")
    rows = b"".join(b"\x00" + struct.pack(">HHH", 65535, 32768, 0) * 16 for _ in range(16))
    write_png(tmp_path / "rgb16.png", 16, 16, 16, 2, rows)
    dataset = load_dataset(tmp_path, SMALL)
    by_name = {item.image_path.name: index for index, item in enumerate(dataset.items)}
    expected = {
        "cmyk.jpg": [1, 0, 0],
        "grey.png": [0.5, 0.5, 0.5],
        "bilevel.bmp": [1, 1, 1],
        "grey16.png": [0.5, 0.5, 0.5],
        "rgb16.png": [1, 0.5, 0],
    }
    for name, rgb in expected.items():
        pixels = dataset.load_image(dataset.items[by_name[name]])
        assert pixels.dtype == np.float32 and pixels.shape == (64, 64, 3)
        assert np.allclose(pixels[32, 32], rgb, atol=0.03), name


def test_scan_reads_headers_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for index in range(5):
        make_image(tmp_path / f"{index}.png", (300, 200))
        make_image(tmp_path / f"{index}.jpg", (200, 300))
    decoded: list[str] = []
    original = ImageFile.ImageFile.load

    def counting_load(self):  # type: ignore[no-untyped-def]
        decoded.append(str(self.filename))
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    dataset = load_dataset(tmp_path, DatasetOptions(resolution=256, bucket_step=64))
    assert decoded == []
    dataset.load_image(dataset.items[0])
    assert set(decoded) == {str(dataset.items[0].image_path)}


# --- buckets -----------------------------------------------------------------------------------


def test_buckets_follow_kohyas_rules() -> None:
    buckets = DatasetOptions(resolution=512).bucket_sizes()
    assert (512, 512) in buckets and (256, 1024) in buckets and (1024, 256) in buckets
    for width, height in buckets:
        assert width * height <= 512 * 512
        assert width % 64 == 0 and height % 64 == 0
        assert 256 <= width <= 1024 and 256 <= height <= 1024
    assert make_buckets(64, 8, 32, 128) == tuple(sorted(set(make_buckets(64, 8, 32, 128))))


def test_each_image_goes_to_the_bucket_closest_to_its_shape(tmp_path: Path) -> None:
    make_image(tmp_path / "wide.png", (400, 200))
    make_image(tmp_path / "tall.png", (200, 400))
    make_image(tmp_path / "square.png", (300, 300))
    dataset = load_dataset(tmp_path, DatasetOptions(resolution=512))
    by_name = {item.image_path.name: item.bucket for item in dataset.items}
    assert by_name == {"wide.png": (704, 320), "tall.png": (320, 704), "square.png": (512, 512)}
    assert dataset.buckets() == {(320, 704): [1], (512, 512): [0], (704, 320): [2]}
    wide = dataset.items[2]
    assert dataset.load_image(wide).shape == (320, 704, 3)


def test_cover_then_centre_crop_never_stretches(tmp_path: Path) -> None:
    # Three vertical stripes red | green | blue; a square crop keeps only the green middle.
    image = Image.new("RGB", (300, 100), (0, 255, 0))
    image.paste((255, 0, 0), (0, 0, 100, 100))
    image.paste((0, 0, 255), (200, 0, 300, 100))
    image.save(tmp_path / "stripes.png")
    dataset = load_dataset(tmp_path, DatasetOptions(resolution=64, enable_bucketing=False))
    assert dataset.items[0].bucket == (64, 64)
    pixels = dataset.load_image(dataset.items[0])
    assert pixels.shape == (64, 64, 3)
    assert np.allclose(pixels[:, 2:-2], [0, 1, 0], atol=0.02)


def test_without_centre_crop_the_image_is_padded_not_cut(tmp_path: Path) -> None:
    make_image(tmp_path / "wide.png", (128, 64), color=(0, 0, 255))
    options = DatasetOptions(
        resolution=64, enable_bucketing=False, center_crop=False, background=(255, 255, 255)
    )
    dataset = load_dataset(tmp_path, options)
    pixels = dataset.load_image(dataset.items[0])
    assert np.allclose(pixels[32, 32], [0, 0, 1], atol=0.02)  # the image, shrunk to 64x32 in the middle
    assert np.allclose(pixels[2, 32], [1, 1, 1]) and np.allclose(pixels[-2, 32], [1, 1, 1])  # padding


def test_bucketing_off_gives_one_square_bucket(tmp_path: Path) -> None:
    make_image(tmp_path / "wide.png", (400, 200))
    make_image(tmp_path / "tall.png", (200, 400))
    dataset = load_dataset(tmp_path, DatasetOptions(resolution=72, enable_bucketing=False))
    assert {item.bucket for item in dataset.items} == {(72, 72)}
