"""LoadDataset's core: scanning a folder into items, captions, repeats and options (pixels and buckets:
test_dataset_pixels.py)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from trainer_core.data.captions import CaptionOptions, read_caption_file
from trainer_core.data.dataset import DatasetError, DatasetOptions, load_dataset
from trainer_core.data.dataset_folder import folder_fingerprint

SMALL = DatasetOptions(resolution=64, bucket_step=8)


def make_image(
    path: Path, size: tuple[int, int] = (64, 64), color=(200, 30, 30), mode: str = "RGB", **save
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save)
    return path


def write_png(path: Path, width: int, height: int, bit_depth: int, color_type: int, raw_rows: bytes) -> Path:
    """A PNG written by hand (for layouts Pillow will not save, and for forged headers)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw_rows))
        + chunk(b"IEND", b"")
    )
    return path


# --- finding images --------------------------------------------------------------------------


def test_finds_every_format_nested_folders_and_kohya_repeats(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("cat, sitting", encoding="utf-8")
    make_image(tmp_path / "b.jpg")
    make_image(tmp_path / "c.JPEG", format="JPEG")
    make_image(tmp_path / "nested" / "deeper" / "d.webp")
    make_image(tmp_path / "10_cat" / "e.bmp")
    make_image(tmp_path / "10_cat" / "sub" / "f.tiff")
    make_image(tmp_path / "3_dog" / "g.tif")
    (tmp_path / "notes.md").write_text("not an image")
    make_image(tmp_path / ".ipynb_checkpoints" / "h.png")
    (tmp_path / "._a.png").write_bytes(b"macOS resource fork, not an image")

    dataset = load_dataset(tmp_path, SMALL)

    names = [item.image_path.name for item in dataset.items]
    assert names == ["g.tif", "e.bmp", "f.tiff", "a.png", "b.jpg", "c.JPEG", "d.webp"]  # 3_dog before 10_cat
    by_name = {item.image_path.name: item for item in dataset.items}
    assert by_name["a.png"].caption == "cat, sitting" and by_name["a.png"].has_caption
    assert by_name["b.jpg"].caption == "" and not by_name["b.jpg"].has_caption
    assert (by_name["e.bmp"].repeats, by_name["f.tiff"].repeats, by_name["g.tif"].repeats) == (10, 10, 3)
    assert by_name["f.tiff"].folder == "10_cat"
    assert by_name["d.webp"].repeats == 1
    assert dataset.sample_count == 10 + 10 + 3 + 4
    assert dataset.dataset_dirs_metadata()["10_cat"] == {"n_repeats": 10, "img_count": 2}


def test_empty_caption_file_counts_as_no_caption(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("  \n")
    (item,) = load_dataset(tmp_path, SMALL).items
    assert item.caption == "" and not item.has_caption


def test_a_folder_name_that_looks_like_a_year_is_warned_about(tmp_path: Path) -> None:
    make_image(tmp_path / "2024_holiday" / "a.png")
    dataset = load_dataset(tmp_path, SMALL)
    assert dataset.items[0].repeats == 2024
    assert any("2024_holiday" in w and "repeats" in w for w in dataset.warnings)


@pytest.mark.parametrize("layout", ["missing", "file", "empty", "no_images"])
def test_no_dataset_errors_name_the_folder_and_what_to_put_there(tmp_path: Path, layout: str) -> None:
    folder = tmp_path / "my_dataset"
    if layout == "file":
        folder.write_text("x")
    elif layout in ("empty", "no_images"):
        folder.mkdir()
    if layout == "no_images":
        (folder / "a.txt").write_text("caption without image")
        (folder / "readme.md").write_text("x")
    with pytest.raises(DatasetError, match="my_dataset") as error:
        load_dataset(folder, SMALL)
    assert ".png" in str(error.value) and ".txt" in str(error.value)


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_symlink_loops_do_not_hang_and_images_are_counted_once(tmp_path: Path) -> None:
    make_image(tmp_path / "sub" / "a.png")
    os.symlink(tmp_path, tmp_path / "sub" / "loop")
    os.symlink(tmp_path / "sub", tmp_path / "again")
    dataset = load_dataset(tmp_path, SMALL)
    assert len(dataset.items) == 1
    assert any("loop" in w or "already scanned" in w for w in dataset.warnings)


# --- bad files ---------------------------------------------------------------------------------


def _bad_files(folder: Path) -> dict[str, Path]:
    good = make_image(folder / "good.png", (96, 64))
    truncated_png = folder / "truncated.png"
    truncated_png.write_bytes(good.read_bytes()[:-30])
    jpeg = make_image(folder / "photo.jpg", (128, 128), quality=90)
    truncated_jpg = folder / "truncated.jpg"
    truncated_jpg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    text = folder / "text.jpg"
    text.write_text("this is not a picture")
    bomb = write_png(folder / "bomb.png", 20000, 20000, 1, 0, b"")
    return {"truncated.png": truncated_png, "truncated.jpg": truncated_jpg, "empty.png": empty,
            "text.jpg": text, "bomb.png": bomb}  # fmt: skip


@pytest.mark.parametrize("name", ["truncated.png", "truncated.jpg", "empty.png", "text.jpg", "bomb.png"])
def test_a_bad_file_stops_the_scan_with_its_name(tmp_path: Path, name: str) -> None:
    make_image(tmp_path / "good.png")
    bad = _bad_files(tmp_path / "bad")[name]
    for other in (tmp_path / "bad").iterdir():
        if other != bad:
            other.unlink()
    with pytest.raises(DatasetError) as error:
        load_dataset(tmp_path, SMALL)
    message = str(error.value)
    assert str(bad) in message and "skip" in message
    if name == "bomb.png":
        assert "decompression-bomb" in message and "Downscale" in message


def test_skip_mode_leaves_bad_files_out_with_warnings(tmp_path: Path) -> None:
    bad = _bad_files(tmp_path)
    dataset = load_dataset(tmp_path, DatasetOptions(resolution=64, bucket_step=8, on_bad_file="skip"))
    assert [item.image_path.name for item in dataset.items] == ["good.png", "photo.jpg"]
    assert {skipped.path for skipped in dataset.skipped} == set(bad.values())
    assert all(any(str(path) in w for w in dataset.warnings) for path in bad.values())
    for item in dataset.items:
        assert dataset.load_image(item).shape == (item.bucket[1], item.bucket[0], 3)


def test_skip_mode_with_nothing_usable_is_still_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="None of the 1 image"):
        load_dataset(tmp_path, DatasetOptions(resolution=64, bucket_step=8, on_bad_file="skip"))


def test_jpeg_with_data_after_the_image_is_not_called_truncated(tmp_path: Path) -> None:
    photo = make_image(tmp_path / "motion.jpg", (128, 96))
    with open(photo, "ab") as file:
        file.write(os.urandom(10000))  # motion photos append a video after the JPEG
    (item,) = load_dataset(tmp_path, SMALL).items
    assert item.size == (128, 96)


def test_an_image_damaged_after_the_scan_is_named_when_loaded(tmp_path: Path) -> None:
    path = make_image(tmp_path / "a.png", (64, 64))
    dataset = load_dataset(tmp_path, SMALL)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DatasetError, match="a.png"):
        dataset.load_image(dataset.items[0])


# --- captions ----------------------------------------------------------------------------------


def test_caption_encodings(tmp_path: Path) -> None:
    (tmp_path / "bom.txt").write_bytes("\ufeffcafé, naïve".encode())
    (tmp_path / "cp1252.txt").write_bytes("café, “quoted”".encode("cp1252"))
    (tmp_path / "utf16.txt").write_bytes("smile, 日本".encode("utf-16"))
    (tmp_path / "crlf.txt").write_bytes(b"a, b\r\nc\r\n")
    assert read_caption_file(tmp_path / "bom.txt") == ("café, naïve", None)
    text, warning = read_caption_file(tmp_path / "cp1252.txt")
    assert text == "café, “quoted”" and warning and "cp1252.txt" in warning and "UTF-8" in warning
    assert read_caption_file(tmp_path / "utf16.txt") == ("smile, 日本", None)
    assert read_caption_file(tmp_path / "crlf.txt") == ("a, b\nc", None)


def test_non_utf8_caption_is_read_with_a_warning_in_the_dataset(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes("façade".encode("latin-1"))
    dataset = load_dataset(tmp_path, SMALL)
    assert dataset.items[0].caption == "façade"
    assert any("a.txt" in w for w in dataset.warnings)


def test_caption_options_travel_with_the_dataset(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("red_hair, smiling")
    dataset = load_dataset(tmp_path, SMALL)
    assert dataset.caption_for(dataset.items[0]) == "red hair, smiling"
    triggered = dataset.with_caption_options(CaptionOptions(trigger_word="ohwx"))
    assert triggered.caption_for(triggered.items[0]) == "ohwx, red hair, smiling"
    assert triggered.content_hash == dataset.content_hash
    assert triggered.tag_frequency_metadata() == {tmp_path.name: {"ohwx": 1, "red hair": 1, "smiling": 1}}


# --- content hash ------------------------------------------------------------------------------


def test_content_hash_changes_iff_the_training_data_changes(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    make_image(folder / "a.png")
    (folder / "a.txt").write_text("cat")
    make_image(folder / "b.png", (64, 32))
    first = load_dataset(folder, SMALL).content_hash
    assert load_dataset(folder, SMALL).content_hash == first
    assert (
        load_dataset(folder, DatasetOptions(resolution=64, bucket_step=8, on_bad_file="skip")).content_hash
        == first
    )
    copy = tmp_path / "moved"
    shutil.copytree(folder, copy)  # copy2 keeps modification times
    assert load_dataset(copy, SMALL).content_hash == first

    (folder / "a.txt").write_text("dog")
    after_caption = load_dataset(folder, SMALL).content_hash
    assert after_caption != first
    make_image(folder / "b.png", (64, 48), color=(1, 2, 3))
    after_image = load_dataset(folder, SMALL).content_hash
    assert after_image != after_caption
    assert load_dataset(folder, DatasetOptions(resolution=128, bucket_step=8)).content_hash != after_image
    assert load_dataset(
        folder, DatasetOptions(resolution=64, bucket_step=8, center_crop=False)
    ).content_hash != (after_image)
    (folder / "5_cats").mkdir()
    (folder / "a.png").rename(folder / "5_cats" / "a.png")
    (folder / "a.txt").rename(folder / "5_cats" / "a.txt")
    assert load_dataset(folder, SMALL).content_hash not in (first, after_caption, after_image)


# --- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"resolution": 500}, "multiple of 8"),
        ({"resolution": 32}, "at least 64"),
        ({"resolution": 520}, "use 512 or 576"),
        ({"bucket_step": 4}, "bucket_step"),
        ({"bucket_step": 512}, "bucket_step"),
        ({"min_bucket_side": 100}, "min_bucket_side"),
        ({"min_bucket_side": 640}, "include the resolution"),
        ({"max_bucket_side": 448}, "include the resolution"),
        ({"on_bad_file": "ignore"}, "on_bad_file"),
        ({"background": (0, 0, 300)}, "background"),
    ],
)
def test_bad_options_name_the_field(kwargs: dict, words: str) -> None:
    with pytest.raises(DatasetError, match=words):
        DatasetOptions(**kwargs)


def test_resolution_need_not_match_the_step_without_bucketing() -> None:
    assert DatasetOptions(resolution=520, enable_bucketing=False).bucket_sizes() == ((520, 520),)


def test_dataset_modules_never_import_comfyui() -> None:
    blocked = ["comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "execution", "nodes"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import trainer_core.data.dataset, trainer_core.data.captions, trainer_core.data.buckets, trainer_core.data.image_files\n"
        "import trainer_core.data.dataset_folder, trainer_core.data.dataset_report, trainer_core.pictures.contact_sheet\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


def test_an_image_over_pillows_pixel_limit_is_named_with_its_size(tmp_path: Path) -> None:
    write_png(tmp_path / "huge.png", 10000, 10000, 1, 0, b"")  # 100 MP: Pillow only warns, we refuse
    with pytest.raises(DatasetError, match=r"huge.png: is 10000x10000 = 100,000,000 pixels.*Downscale"):
        load_dataset(tmp_path, SMALL)


def test_folder_fingerprint_changes_with_files_not_with_reads(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png")
    first = folder_fingerprint(tmp_path)
    load_dataset(tmp_path, SMALL)
    assert folder_fingerprint(tmp_path) == first
    (tmp_path / "a.txt").write_text("cat")
    with_caption = folder_fingerprint(tmp_path)
    assert with_caption != first
    make_image(tmp_path / "b.png")
    assert folder_fingerprint(tmp_path) not in (first, with_caption)
    assert folder_fingerprint(tmp_path / "missing") == ""


def test_the_pixel_limit_holds_even_if_pillows_guard_was_switched_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # some custom nodes do this globally
    write_png(tmp_path / "bomb.png", 20000, 20000, 1, 0, b"")
    with pytest.raises(DatasetError, match="bomb.png.*decompression-bomb"):
        load_dataset(tmp_path, SMALL)


def test_upper_case_caption_extension_is_found(tmp_path: Path) -> None:
    make_image(tmp_path / "a.PNG", format="PNG")
    (tmp_path / "a.TXT").write_text("cat")
    assert load_dataset(tmp_path, SMALL).items[0].caption == "cat"
