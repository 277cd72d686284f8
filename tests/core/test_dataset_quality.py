"""The dataset report's quality flags: blurry, too dark or bright, heavy JPEG artefacts, far below the
training resolution; each flag names its files and its threshold, and the contact sheet marks them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers.quality_pictures import blurred, brightness, save, sharp_picture
from trainer_core.data.captions import CaptionOptions
from trainer_core.data.dataset import DatasetOptions, load_dataset
from trainer_core.data.dataset_report import DatasetReport, ReportOptions, inspect_dataset
from trainer_core.data.quality import (
    BLUR_THRESHOLD,
    JPEG_QUALITY_THRESHOLD,
    estimate_jpeg_quality,
    measure_quality,
)
from trainer_core.pictures import contact_sheet
from trainer_core.pictures.contact_sheet import MAGENTA, contact_sheet_image

OPTIONS = DatasetOptions(resolution=256, bucket_step=64)
TRIGGER = CaptionOptions(trigger_word="ohwx")  # no caption errors or warnings to read past


def report_of(folder: Path, options: DatasetOptions = OPTIONS) -> DatasetReport:
    return inspect_dataset(load_dataset(folder, options), caption_options=TRIGGER)


def flagged(report: DatasetReport) -> dict[str, set[str]]:
    return {flag.label: {path.name for path in flag.files} for flag in report.quality_flags}


def warning_about(report: DatasetReport, words: str) -> str:
    (message,) = [p.message for p in report.warnings if words.lower() in p.message.lower()]
    return message


def test_a_sharp_picture_is_not_blurry_and_its_blurred_copy_is(tmp_path: Path) -> None:
    picture = sharp_picture()
    save(picture, tmp_path / "sharp.png")
    save(blurred(picture), tmp_path / "blurred.png")

    report = report_of(tmp_path)

    assert flagged(report) == {"blurry": {"blurred.png"}}
    message = warning_about(report, "blurry")
    assert f"variance of the Laplacian below {BLUR_THRESHOLD:g}" in message and "at 256 px" in message
    assert "blurred.png (" in message and "sharp.png" not in message
    assert "Quality: blurry 1 (" in report.summary()


def test_sharpness_does_not_depend_on_the_file_size() -> None:
    large = sharp_picture((1536, 1024))
    figures = [measure_quality(large.resize((w, w * 2 // 3), Image.Resampling.BOX)).sharpness for w in (1536, 768, 384)]
    assert max(figures) / min(figures) < 1.5, figures
    assert min(figures) > 3 * BLUR_THRESHOLD


def test_darkened_and_brightened_copies_are_flagged_and_the_original_and_white_paper_are_not(tmp_path: Path) -> None:
    picture = sharp_picture()
    save(picture, tmp_path / "normal.png")
    save(brightness(picture, 0.3), tmp_path / "darkened.png")
    save(brightness(picture, 2.2), tmp_path / "brightened.png")
    paper = Image.new("RGB", (384, 256), (235, 232, 225))  # bright but nothing burnt out to white
    paper.paste(sharp_picture((200, 60), seed=3), (90, 100))
    save(paper, tmp_path / "paper.png")

    report = report_of(tmp_path)

    assert flagged(report) == {"dark": {"darkened.png"}, "bright": {"brightened.png"}}
    assert "mean luminance below 50 of 255" in warning_about(report, "too dark")
    bright = warning_about(report, "too bright")
    assert "mean luminance above 200 of 255 with at least 10% of pixels clipped to white" in bright
    assert "brightened.png (222, 56% white)" in bright


def test_jpeg_quality_5_has_heavy_artefacts_and_quality_95_does_not(tmp_path: Path) -> None:
    picture = sharp_picture()
    save(picture, tmp_path / "good.jpg", quality=95)
    save(picture, tmp_path / "bad.jpg", quality=5)
    save(picture, tmp_path / "lossless.png")

    assert estimate_jpeg_quality((tmp_path / "good.jpg").read_bytes()) == 95
    assert estimate_jpeg_quality((tmp_path / "bad.jpg").read_bytes()) == 5
    assert estimate_jpeg_quality((tmp_path / "lossless.png").read_bytes()) is None
    report = report_of(tmp_path)
    assert flagged(report) == {"jpeg": {"bad.jpg"}}
    message = warning_about(report, "JPEG")
    assert f"estimated JPEG quality below {JPEG_QUALITY_THRESHOLD}" in message and "bad.jpg (quality 5)" in message


def test_a_picture_far_below_the_training_resolution_is_flagged_once(tmp_path: Path) -> None:
    picture = sharp_picture()
    save(picture.resize((96, 64), Image.Resampling.LANCZOS), tmp_path / "tiny.png")  # 3.3x up to its 320x192 bucket
    save(picture.resize((300, 200), Image.Resampling.LANCZOS), tmp_path / "little.png")  # 1.3x
    save(picture.resize((768, 512), Image.Resampling.LANCZOS), tmp_path / "large.png")

    report = report_of(tmp_path)

    assert {path.name for path in report.below_resolution} == {"tiny.png", "little.png"}
    assert flagged(report) == {"small": {"tiny.png"}}
    small = warning_about(report, "far below the training resolution")
    assert "enlarged more than 2x to fill its bucket at resolution 256" in small and "tiny.png (96x64, 3.3x)" in small
    upscaled = warning_about(report, "smaller than their training size")
    assert "little.png" in upscaled and "tiny.png" not in upscaled  # each file named in one warning
    assert "Below training size (upscaled): 2, of which 1 far below it" in report.summary()


def test_no_flags_for_good_pictures(tmp_path: Path) -> None:
    for seed in range(3):
        save(sharp_picture(seed=seed), tmp_path / f"{seed}.jpg", quality=90)
    report = report_of(tmp_path)
    assert report.quality_flags == ()
    assert not any("blurry" in p.message or "JPEG" in p.message or "luminance" in p.message for p in report.problems)
    assert "Quality: no blurry" in report.summary()


def _cell_box(index: int, cell: int) -> tuple[int, int, int, int]:
    """The cell of the index-th thumbnail on a sheet drawn in one row."""
    left = contact_sheet._GAP + index * (cell + contact_sheet._GAP)
    return left, contact_sheet._HEADER_HEIGHT, left + cell, contact_sheet._HEADER_HEIGHT + cell


def test_the_contact_sheet_frames_flagged_pictures_in_magenta(tmp_path: Path) -> None:
    picture = sharp_picture()
    save(picture, tmp_path / "a_sharp.png")
    save(blurred(picture), tmp_path / "b_blurred.png")  # also a near duplicate of a_sharp: framed red too
    save(brightness(sharp_picture(seed=1), 0.3), tmp_path / "c_dark.png")
    save(sharp_picture(seed=2), tmp_path / "d_other.png")
    dataset = load_dataset(tmp_path, OPTIONS)
    report = inspect_dataset(dataset, caption_options=TRIGGER)

    sheet = np.asarray(contact_sheet_image(dataset, report, columns=len(dataset.items)))

    cells = [sheet[top:bottom, left:right] for left, top, right, bottom in (_cell_box(i, 128) for i in range(4))]
    magenta = [int((pixels == MAGENTA).all(axis=-1).sum()) for pixels in cells]
    assert magenta[1] > 2 * 128 and magenta[2] > 2 * 128, magenta  # at least a frame's side
    assert magenta[0] == magenta[3] == 0, magenta
    assert report.near_duplicates == ((tmp_path / "a_sharp.png", tmp_path / "b_blurred.png"),)
    assert (cells[1] == contact_sheet.RED).all(axis=-1).sum() > 2 * 128  # the duplicate's frame stays, outside
    legend = sheet[contact_sheet._HEADER_HEIGHT + 128 + 16 :]
    assert (legend == MAGENTA).all(axis=-1).any(), "the legend shows the quality colour"


def test_a_flat_picture_is_not_called_blurry(tmp_path: Path) -> None:
    save(Image.new("RGB", (384, 256), (120, 160, 90)), tmp_path / "flat.png")
    assert measure_quality(Image.open(tmp_path / "flat.png")).sharpness == 0
    assert report_of(tmp_path).quality_flags == ()


def test_quality_checks_off_measures_nothing_but_still_flags_far_too_small_pictures(tmp_path: Path) -> None:
    picture = sharp_picture()
    save(blurred(picture), tmp_path / "blurred.png")
    save(picture.resize((96, 64), Image.Resampling.LANCZOS), tmp_path / "tiny.png")
    dataset = load_dataset(tmp_path, OPTIONS)

    report = inspect_dataset(dataset, ReportOptions(quality_checks=False), caption_options=TRIGGER)

    assert flagged(report) == {"small": {"tiny.png"}}
    assert all(fingerprint.quality is None for fingerprint in report.fingerprints.values())
    assert "not checked: quality_checks is off" in report.summary()
    assert flagged(inspect_dataset(dataset, caption_options=TRIGGER)) == {"blurry": {"blurred.png"}, "small": {"tiny.png"}}
