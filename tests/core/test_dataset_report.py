"""The dataset check before training: counts, duplicates, problems, the text and the contact sheet."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer_core.data.captions import CaptionOptions
from trainer_core.data.dataset import DatasetError, DatasetOptions, load_dataset
from trainer_core.data.dataset_report import ReportOptions, inspect_dataset, load_checked_dataset
from trainer_core.pictures.contact_sheet import render_contact_sheet

OPTIONS = DatasetOptions(resolution=64, bucket_step=8)


def noise_image(path: Path, size: tuple[int, int] = (96, 96), seed: int = 0, fmt: str | None = None) -> Path:
    """A picture with structure (smoothed noise), different for every seed."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC).save(path, format=fmt)
    return path


def caption(path: Path, text: str) -> None:
    path.with_suffix(".txt").write_text(text, encoding="utf-8")


def test_counts_buckets_sizes_and_captions(tmp_path: Path) -> None:
    noise_image(tmp_path / "5_subject" / "a.png", (128, 64), seed=1)
    caption(tmp_path / "5_subject" / "a.png", "ohwx, smiling, red_hair")
    noise_image(tmp_path / "5_subject" / "b.png", (64, 128), seed=2)
    caption(tmp_path / "5_subject" / "b.png", "smiling, outdoors")
    noise_image(tmp_path / "c.png", (32, 32), seed=3)  # below the 64 px training size
    noise_image(tmp_path / "d.png", (96, 96), seed=4)
    caption(tmp_path / "d.png", "outdoors, smiling")
    noise_image(tmp_path / "e.png", (80, 80), seed=5)
    caption(tmp_path / "e.png", "OHWX portrait")
    dataset = load_dataset(tmp_path, OPTIONS).with_caption_options(CaptionOptions(trigger_word="ohwx"))

    report = inspect_dataset(dataset)

    assert report.image_count == 5 and report.sample_count == 5 + 5 + 3
    assert report.bucket_histogram == {bucket: len(ix) for bucket, ix in dataset.buckets().items()}
    assert sum(report.bucket_histogram.values()) == 5
    assert report.size_spread.width == (32, 80.0, 128) and report.size_spread.aspect == (0.5, 2.0)
    assert report.below_resolution == (tmp_path / "c.png",)
    assert report.without_caption == (tmp_path / "c.png",)
    assert report.trigger_word == "ohwx" and report.with_trigger_word == 2
    assert report.top_tags[0] == ("ohwx", 5) and ("smiling", 3) in report.top_tags
    assert ("red hair", 1) in report.top_tags  # tags as trained: underscores became spaces
    assert report.exact_duplicates == () and report.near_duplicates == ()
    assert report.errors == ()
    assert any("c.png" in p.message and "trigger word" in p.message for p in report.warnings)

    text = report.summary()
    for expected in ("5 images", "13 samples per epoch", "Buckets", "Below training size (upscaled): 1",
                     "4 of 5 images", "'ohwx': already in 2 of 5", "Most frequent tags: ohwx (5)", "WARNINGS"):  # fmt: skip
        assert expected in text, expected


def test_exact_and_near_duplicates_are_found_and_different_pictures_are_not(tmp_path: Path) -> None:
    original = noise_image(tmp_path / "original.png", (200, 160), seed=10)
    shutil.copy(original, tmp_path / "copy.png")
    with Image.open(original) as image:
        image.resize((150, 120)).save(tmp_path / "smaller.jpg", quality=85)
    for seed in range(11, 20):
        noise_image(tmp_path / f"other{seed}.png", (200, 160), seed=seed)
    for index, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (120, 120, 120)]):
        Image.new("RGB", (64, 64), colour).save(
            tmp_path / f"flat{index}.png"
        )  # flat pictures look alike to dHash

    report = inspect_dataset(load_dataset(tmp_path, OPTIONS))

    assert report.exact_duplicates == ((tmp_path / "copy.png", tmp_path / "original.png"),)
    assert len(report.near_duplicates) == 1
    assert set(report.near_duplicates[0]) == {tmp_path / "copy.png", tmp_path / "smaller.jpg"}
    messages = " ".join(p.message for p in report.warnings)
    assert "identical files" in messages and "near-identical" in messages

    exact_only = inspect_dataset(load_dataset(tmp_path, OPTIONS), ReportOptions(near_duplicate_distance=0))
    assert exact_only.near_duplicates == () and len(exact_only.exact_duplicates) == 1


def test_no_captions_and_no_trigger_word_is_an_error(tmp_path: Path) -> None:
    for seed in range(6):
        noise_image(tmp_path / f"{seed}.png", seed=seed)
    dataset = load_dataset(tmp_path, OPTIONS)
    (error,) = inspect_dataset(dataset).errors
    assert "no trigger word" in error.message and "caption" in error.message and len(error.files) == 6
    with_trigger = inspect_dataset(dataset, caption_options=CaptionOptions(trigger_word="ohwx"))
    assert with_trigger.errors == ()
    assert any("trigger word 'ohwx' alone" in p.message for p in with_trigger.warnings)
    assert "ERRORS (1)" in inspect_dataset(dataset).summary()


def test_few_images_is_a_warning(tmp_path: Path) -> None:
    noise_image(tmp_path / "only.png")
    caption(tmp_path / "only.png", "cat")
    report = inspect_dataset(load_dataset(tmp_path, OPTIONS))
    assert any("Only 1 image" in p.message for p in report.warnings)


def test_very_wide_images_warn_about_cropping(tmp_path: Path) -> None:
    noise_image(tmp_path / "panorama.png", (800, 100))
    caption(tmp_path / "panorama.png", "city")
    report = inspect_dataset(load_dataset(tmp_path, DatasetOptions(resolution=64, enable_bucketing=False)))
    assert report.heavily_cropped == (tmp_path / "panorama.png",)
    assert any("centre cropping" in p.message for p in report.warnings)


def _corrupt_middle(path: Path) -> None:
    """Damage the compressed pixels but keep the header and the end marker: only decoding notices."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 40] = bytes(40)
    path.write_bytes(bytes(data))


def test_damaged_pixels_stop_or_are_skipped_as_chosen(tmp_path: Path) -> None:
    for seed in range(3):
        noise_image(tmp_path / f"{seed}.png", (256, 256), seed=seed)
        caption(tmp_path / f"{seed}.png", "cat")
    _corrupt_middle(tmp_path / "1.png")
    assert len(load_dataset(tmp_path, OPTIONS).items) == 3  # the header scan cannot see it

    with pytest.raises(DatasetError, match=r"1\.png.*on_bad_file"):
        load_checked_dataset(tmp_path, OPTIONS, CaptionOptions())

    skip = DatasetOptions(resolution=64, bucket_step=8, on_bad_file="skip")
    dataset, report = load_checked_dataset(tmp_path, skip, CaptionOptions(trigger_word="ohwx"))
    assert [item.image_path.name for item in dataset.items] == ["0.png", "2.png"]
    assert [s.path.name for s in dataset.skipped] == ["1.png"]
    assert report.image_count == 2 and report.damaged == {} and report.errors == ()
    assert any("1.png" in p.message for p in report.warnings)
    assert dataset.caption_for(dataset.items[0]) == "ohwx, cat"
    assert dataset.content_hash != load_dataset(tmp_path, skip).content_hash

    unchecked = load_dataset(tmp_path, OPTIONS)
    (error,) = inspect_dataset(unchecked).errors
    assert "cannot be decoded" in error.message and error.files == (tmp_path / "1.png",)


def test_every_unusable_image_is_named_in_one_message_in_error_mode(tmp_path: Path, caplog) -> None:
    """A folder with 7 broken files of both kinds (headers that cannot be read, pixels that cannot be
    decoded) is fixed in one run, not seven: the message counts them all and names the first five with
    their reasons; the console lists every one. In skip mode the same 7 are left out and named."""
    for seed in range(10):
        noise_image(tmp_path / f"{seed}.png", (64, 64), seed=seed)
        caption(tmp_path / f"{seed}.png", "cat")
    for seed in (1, 3, 5):
        _corrupt_middle(tmp_path / f"{seed}.png")  # only decoding notices
    (tmp_path / "6.png").write_bytes(b"")  # the header scan notices these
    (tmp_path / "7.png").write_text("not an image")
    (tmp_path / "8.png").write_bytes((tmp_path / "0.png").read_bytes()[:20])
    (tmp_path / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    broken = {"1.png", "3.png", "5.png", "6.png", "7.png", "8.png", "9.png"}

    with caplog.at_level("ERROR"), pytest.raises(DatasetError) as raised:
        load_checked_dataset(tmp_path, OPTIONS, CaptionOptions())
    message = str(raised.value)
    assert message.startswith(f"7 image(s) in {tmp_path.resolve()} cannot be used: ")
    named = {name for name in broken if f"{name}: " in message}
    assert len(named) == 5, message
    assert "and 2 more (all 7 are listed in ComfyUI's console)" in message and "on_bad_file to 'skip'" in message
    logged = {record.getMessage().split("cannot use ")[1].split(":")[0] for record in caplog.records
              if "cannot use" in record.getMessage()}
    assert {Path(path).name for path in logged} == broken

    skip = DatasetOptions(resolution=64, bucket_step=8, on_bad_file="skip")
    dataset, report = load_checked_dataset(tmp_path, skip, CaptionOptions())
    assert sorted(item.image_path.name for item in dataset.items) == ["0.png", "2.png", "4.png"]
    assert {s.path.name for s in dataset.skipped} == broken
    assert report.image_count == 3


def test_contact_sheet_is_an_image_with_a_bounded_number_of_thumbnails(tmp_path: Path) -> None:
    for seed in range(30):
        noise_image(tmp_path / f"{seed}.png", (48 + seed, 64), seed=seed)
    dataset = load_dataset(tmp_path, OPTIONS)
    report = inspect_dataset(dataset, ReportOptions(sheet_images=8, thumbnail_size=32))
    assert len(report.thumbnails) == len(report.sheet_items) == 8
    assert report.sheet_items[0] == 0 and report.sheet_items[-1] == 29
    assert sum(p.thumbnail is not None for p in report.fingerprints.values()) == 8
    sheet = render_contact_sheet(dataset, report)
    assert sheet.dtype == np.float32 and sheet.ndim == 3 and sheet.shape[2] == 3
    assert 0.0 <= sheet.min() and sheet.max() <= 1.0
    assert sheet.shape[0] < 300 and sheet.shape[1] <= 400


def test_contact_sheet_without_thumbnails_is_still_an_image(tmp_path: Path) -> None:
    noise_image(tmp_path / "a.png")
    dataset = load_dataset(tmp_path, OPTIONS)
    sheet = render_contact_sheet(dataset, inspect_dataset(dataset, ReportOptions(sheet_images=0)))
    assert sheet.shape[0] > 0 and sheet.shape[1] > 0


def test_thousands_of_small_images_take_seconds(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for index in range(2000):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        path = tmp_path / f"{index // 500}_part" / f"{index}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(path, compress_level=1)
        if index % 2:
            caption(path, f"tag{index % 7}, common")
    for index in range(3):
        shutil.copy(tmp_path / "1_part" / f"{500 + index}.png", tmp_path / f"copy{index}.png")

    started = time.perf_counter()
    dataset, report = load_checked_dataset(tmp_path, OPTIONS, CaptionOptions(trigger_word="ohwx"))
    elapsed = time.perf_counter() - started

    assert report.image_count == 2003 and len(report.exact_duplicates) == 3
    assert report.near_duplicates == ()
    assert len(report.thumbnails) == ReportOptions().sheet_images
    assert elapsed < 30, f"scan + report of 2,003 images took {elapsed:.1f} s"
    render_contact_sheet(dataset, report)


def test_near_duplicate_groups_do_not_chain_small_steps_into_one_group() -> None:
    from trainer_core.data.image_fingerprints import ImageFingerprint, near_duplicate_groups

    # a~b and b~c are 3 bits apart, a and c 6: c is not a near duplicate of a.
    prints = [
        ImageFingerprint(Path(name), digest=name, difference_hash=bits)
        for name, bits in (("a", 0b0), ("b", 0b111), ("c", 0b111111))
    ]
    assert near_duplicate_groups(prints, 3) == ((Path("a"), Path("b")),)
    assert near_duplicate_groups(prints, 6) == ((Path("a"), Path("b"), Path("c")),)


def test_images_read_by_threads_a_window_at_a_time_are_all_checked_in_order(tmp_path: Path) -> None:
    # 2 threads read 64 images at a time: a duplicate pair in different windows is still found.
    count = 150
    for index in range(count):
        noise_image(tmp_path / f"{index:03d}.png", (64, 64), seed=index)
    shutil.copy(tmp_path / "003.png", tmp_path / "140.png")
    dataset = load_dataset(tmp_path, OPTIONS)

    report = inspect_dataset(dataset, ReportOptions(workers=2, near_duplicate_distance=0))

    assert [print_.path for print_ in report.fingerprints.values()] == [item.image_path for item in dataset.items]
    assert report.exact_duplicates == ((tmp_path / "003.png", tmp_path / "140.png"),)
