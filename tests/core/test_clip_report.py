"""The dataset check with clips: the report's clip lines, frame strips on the contact sheet, and damaged
clips found when their frames are read (tiny numbered clips: tests/helpers/clip_files.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers.clip_files import frame_number, frame_picture, write_frame_folder, write_video
from trainer_core.data.captions import CaptionOptions
from trainer_core.data.clip_items import read_clip_fingerprint, strip_indices
from trainer_core.data.clip_report import clip_label
from trainer_core.data.dataset import DatasetError, DatasetOptions
from trainer_core.data.dataset_report import load_checked_dataset
from trainer_core.pictures.contact_sheet import contact_sheet_image

CLIPS = DatasetOptions(resolution=64, bucket_step=8, frame_count=9, frame_start="uniform", clip_windows=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    write_video(root / "walk.mp4", 50, fps=24, size=(160, 96))
    write_video(root / "wave.webm", 30, fps=30, codec="libvpx-vp9")
    write_frame_folder(root / "steps", 18)
    (root / "steps.txt").write_text("steps")
    frame_picture(5).save(root / "still.png")
    frame_picture(9).save(root / "other.png")
    return root


def test_the_report_counts_clips_apart_and_lists_their_length_rate_size_and_windows(folder: Path) -> None:
    dataset, report = load_checked_dataset(folder, CLIPS, CaptionOptions(trigger_word="sks"))
    text = report.summary()
    assert "Clips: 3 clip(s) giving 6 training window(s), and 2 image(s)" in text
    assert ("walk.mp4: 50 frames, 2.1 s at 24 fps, 160x96; trains 2 window(s) of 9 frames: frames 0-8, "
            "frames 41-49") in text
    assert "wave.webm: 30 frames, 1.0 s at 30 fps, 80x48; trains 2 window(s) of 9 frames: frames 0-8, frames 21-29" \
        in text
    assert "steps: 18 frames, no frame rate (a folder of frames), 80x48; trains 2 window(s)" in text
    assert "(width x height x frames: samples): 80x48 x 1f: 2, 80x48 x 9f: 6." in text
    strided = DatasetOptions(resolution=64, bucket_step=8, frame_count=5, frame_stride=3)
    _, report = load_checked_dataset(folder, strided, CaptionOptions(trigger_word="sks"))
    assert "walk.mp4: 50 frames, 2.1 s at 24 fps, 160x96; trains 1 window(s) of 5 frames: frames 0-12 every 3" \
        in report.summary()


def test_an_image_dataset_report_says_nothing_of_clips(tmp_path: Path) -> None:
    frame_picture(5).save(tmp_path / "still.png")
    _, report = load_checked_dataset(tmp_path, CLIPS, CaptionOptions(trigger_word="sks"))
    assert report.clip_lines == () and "Clips" not in report.summary()


def test_a_clip_cell_shows_a_strip_of_its_window_from_first_to_last_frame(folder: Path) -> None:
    dataset, report = load_checked_dataset(folder, CLIPS, CaptionOptions(trigger_word="sks"))
    late = next(item for item in dataset.items if item.image_path.name == "walk.mp4" and item.clip.window == 1)
    assert strip_indices(late.clip) == (41, 44, 46, 49)  # 4 of the window's frames, first and last included
    strip = read_clip_fingerprint(late.image_path, late.clip, (255, 255, 255), 512, True).thumbnail
    quarter = strip.width // 4
    cells = [np.asarray(strip.crop((k * quarter, 0, (k + 1) * quarter, strip.height))) for k in range(4)]
    assert [frame_number(cell) for cell in cells] == [41, 44, 46, 49]
    sheet_index = report.sheet_items.index(dataset.items.index(late))
    thumbnail = report.thumbnails[sheet_index]
    assert thumbnail.width > 3 * thumbnail.height  # a strip, not one picture
    assert clip_label(late) == "2.1 s · 24 fps · 160x96"
    steps = next(item for item in dataset.items if item.image_path.name == "steps")
    assert clip_label(steps) == "18 frames · 80x48"
    sheet = contact_sheet_image(dataset, report)
    assert sheet.height > 2 * report.thumbnails[0].height


def test_windows_of_one_clip_are_not_duplicates_of_each_other(tmp_path: Path) -> None:
    write_video(tmp_path / "slow.mp4", 40, fps=24)  # frames 0-39 differ only in their last stripes
    _, report = load_checked_dataset(tmp_path, CLIPS, CaptionOptions(trigger_word="sks"))
    assert report.image_count == 2 and report.exact_duplicates == () and report.near_duplicates == ()


def test_a_clip_truncated_after_its_header_is_damaged_then_stopped_on_or_skipped(tmp_path: Path) -> None:
    write_video(tmp_path / "good.mp4", 20)
    cut = write_video(tmp_path / "cut.mp4", 60, faststart=True)
    header_only = DatasetOptions(resolution=64, bucket_step=8, frame_count=9, frame_start="uniform", clip_windows=3)
    whole = cut.read_bytes()
    cut.write_bytes(whole[: len(whole) * 2 // 3])  # the header still says 60 frames; the last ones are gone
    with pytest.raises(DatasetError) as caught:
        load_checked_dataset(tmp_path, header_only, CaptionOptions(trigger_word="sks"))
    assert "cut.mp4: ends before frame" in str(caught.value) and "on_bad_file" in str(caught.value)
    skip = DatasetOptions(resolution=64, bucket_step=8, frame_count=9, frame_start="uniform", clip_windows=3,
                          on_bad_file="skip")
    dataset, report = load_checked_dataset(tmp_path, skip, CaptionOptions(trigger_word="sks"))
    assert {item.image_path.name for item in dataset.items} == {"good.mp4"}
    assert "cut.mp4" in report.summary() and "left out" in report.summary()
