"""Load Dataset reads clips: mp4/webm/mov, animated gif/webp and folders of numbered frames, with the
exact source frames each item trains (frames carry their number as stripes: tests/helpers/clip_files.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.clip_files import (
    frame_number,
    frame_numbers,
    frame_picture,
    write_animation,
    write_frame_folder,
    write_variable_rate_video,
    write_video,
)
from trainer_core.data import clips
from trainer_core.data.clips import read_clip_header
from trainer_core.data.dataset import DatasetError, DatasetOptions, load_dataset

SMALL = DatasetOptions(resolution=64, bucket_step=8)


def options(**changes) -> DatasetOptions:
    return replace(SMALL, **changes)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One of each kind of clip, with captions, plus a still image."""
    root = tmp_path_factory.mktemp("mixed")
    write_video(root / "walk.mp4", 40, fps=24)
    write_video(root / "wave.webm", 30, fps=30, codec="libvpx-vp9")
    write_video(root / "jump.mov", 25, fps=25, codec="mpeg4")
    write_animation(root / "spin.gif", 20, fps=10)
    write_animation(root / "blink.webp", 20, fps=20)
    write_frame_folder(root / "steps", 18)
    frame_picture(5).save(root / "still.png")
    for name in ("walk", "wave", "jump", "spin", "blink", "steps", "still"):
        (root / f"{name}.txt").write_text(f"a {name}")
    return root


def test_every_kind_of_clip_is_read_with_its_caption_and_an_image_trains_as_one_frame(mixed: Path) -> None:
    dataset = load_dataset(mixed, options(frame_count=9))
    by_name = {item.image_path.name: item for item in dataset.items}
    assert sorted(by_name) == ["blink.webp", "jump.mov", "spin.gif", "steps", "still.png", "walk.mp4", "wave.webm"]
    expected = {  # kind, source frames, fps
        "walk.mp4": ("video", 40, 24.0), "wave.webm": ("video", 30, 30.0), "jump.mov": ("video", 25, 25.0),
        "spin.gif": ("animation", 20, 10.0), "blink.webp": ("animation", 20, 20.0), "steps": ("frames", 18, 0.0),
    }
    for name, (kind, count, fps) in expected.items():
        item = by_name[name]
        assert (item.clip.kind, item.clip.source_frames, item.clip.fps) == (kind, count, fps), name
        assert item.caption == f"a {name.split('.')[0]}" and item.size == (80, 48) and item.frames == 9
        frames = dataset.load_frames(item)
        assert frames.shape == (9, item.bucket[1], item.bucket[0], 3) and frames.dtype == np.float32
        assert frame_numbers(frames) == list(range(9)), name
        assert frame_number(dataset.load_image(item)) == 0  # an image model sees the first trained frame
    still = by_name["still.png"]
    assert still.clip is None and still.frames == 1 and still.caption == "a still"
    assert dataset.load_frames(still).shape == (1, still.bucket[1], still.bucket[0], 3)
    assert frame_number(dataset.load_frames(still)[0]) == 5
    assert dataset.has_clips and not load_dataset(mixed / "steps", SMALL).has_clips  # a frames folder alone: images


def test_a_webm_without_a_stated_frame_count_is_counted(mixed: Path) -> None:
    import av

    with av.open(str(mixed / "wave.webm")) as container:
        assert container.streams.video[0].frames == 0  # the container does not say
    header = read_clip_header(mixed / "wave.webm", "video")
    assert (header.frame_count, header.fps, header.size, header.duration) == (30, 30.0, (80, 48), 1.0)


@pytest.fixture(scope="module")
def clip40(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clip40")
    write_video(root / "walk.mp4", 40, fps=24)
    return root


@pytest.mark.parametrize(
    ("changes", "windows"),
    [
        ({"frame_count": 17}, [list(range(17))]),
        ({"frame_count": 20}, [list(range(17))]),  # snapped down to 4k+1
        ({"frame_count": 1}, [[0]]),
        ({"frame_count": 9, "frame_stride": 3}, [list(range(0, 25, 3))]),
        ({"frame_count": 9, "target_fps": 12.0}, [list(range(0, 17, 2))]),  # 24 fps retimed to 12
        ({"frame_count": 9, "target_fps": 16.0}, [[0, 1, 3, 4, 6, 7, 9, 10, 12]]),  # every 1.5 frames
        ({"frame_count": 9, "target_fps": 16.0, "frame_stride": 2}, [list(range(0, 25, 3))]),
        ({"frame_count": 9, "target_fps": 60.0}, [list(range(9))]),  # never slowed down
        ({"frame_count": 9, "frame_start": "uniform", "clip_windows": 3},
         [list(range(0, 9)), list(range(16, 25)), list(range(31, 40))]),
        ({"frame_count": 17, "frame_stride": 2, "frame_start": "uniform", "clip_windows": 2},
         [list(range(0, 33, 2)), list(range(7, 40, 2))]),
        ({"frame_count": 9, "frame_start": "uniform", "clip_windows": 1}, [list(range(9))]),
    ],
)
def test_frame_sampling_is_exact(clip40: Path, changes: dict, windows: list[list[int]]) -> None:
    dataset = load_dataset(clip40, options(**changes))
    assert [list(item.clip.indices) for item in dataset.items] == windows
    for item, expected in zip(dataset.items, windows, strict=True):
        assert item.frames == len(expected) and item.clip.windows == len(windows)
        assert frame_numbers(dataset.load_frames(item)) == expected
    snapped = [note for note in dataset.warnings if "snapped down to 17" in note]
    assert len(snapped) == (1 if changes.get("frame_count") == 20 else 0)


def test_random_start_draws_one_window_per_clip_once_per_scan(tmp_path: Path) -> None:
    for name in ("a", "b", "c", "d"):
        write_video(tmp_path / f"{name}.mp4", 60, fps=24)
    first = load_dataset(tmp_path, options(frame_count=9, frame_start="random"))
    again = load_dataset(tmp_path, options(frame_count=9, frame_start="random"))
    starts = [item.clip.indices[0] for item in first.items]
    assert starts == [item.clip.indices[0] for item in again.items]  # the same windows: latents stay cached
    assert first.content_hash == again.content_hash
    assert len(set(starts)) > 1 and all(0 <= start <= 51 for start in starts)  # not all at the head
    for item in first.items:
        assert frame_numbers(first.load_frames(item)) == list(range(item.clip.indices[0], item.clip.indices[0] + 9))


def test_scanning_decodes_no_frame(mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args):
        raise AssertionError("the scan decoded a frame")

    monkeypatch.setattr(clips, "decoded_frames", refuse)
    dataset = load_dataset(mixed, options(frame_count=9))
    assert sum(item.clip is not None and item.clip.kind == "video" for item in dataset.items) == 3


def test_a_window_at_the_end_of_a_long_clip_is_reached_by_seeking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write_video(tmp_path / "long.mp4", 600, fps=24, gop=12)
    decoded: list[int] = []
    real = clips.decoded_frames

    def counting(container, stream):
        for frame in real(container, stream):
            decoded.append(1)
            yield frame

    monkeypatch.setattr(clips, "decoded_frames", counting)
    dataset = load_dataset(tmp_path, options(frame_count=17, frame_start="uniform", clip_windows=2))
    assert decoded == []
    last = dataset.items[-1]
    assert last.clip.indices == tuple(range(583, 600))
    assert frame_numbers(dataset.load_frames(last)) == list(range(583, 600))
    assert len(decoded) <= 17 + 12  # from the key frame before frame 583, not from frame 0


def test_frame_buckets_group_by_size_and_frame_count(tmp_path: Path) -> None:
    write_video(tmp_path / "wide.mp4", 20, size=(96, 48))
    write_video(tmp_path / "short.mp4", 12)
    write_video(tmp_path / "long.mp4", 20)
    frame_picture(1).save(tmp_path / "still.png")
    dataset = load_dataset(tmp_path, options(frame_count=17, short_clips="shorten"))
    frames = {item.image_path.name: item.frames for item in dataset.items}
    assert frames == {"wide.mp4": 17, "short.mp4": 9, "long.mp4": 17, "still.png": 1}
    names = {key: sorted(dataset.items[i].image_path.name for i in indices)
             for key, indices in dataset.frame_buckets().items()}
    wide = next(item.bucket for item in dataset.items if item.image_path.name == "wide.mp4")
    assert wide != (80, 48)
    assert names == {((80, 48), 1): ["still.png"], ((80, 48), 9): ["short.mp4"], ((80, 48), 17): ["long.mp4"],
                     (wide, 17): ["wide.mp4"]}
    assert frame_numbers(dataset.load_frames(dataset.items[[i.image_path.name for i in dataset.items]
                                                           .index("short.mp4")])) == list(range(9))
    assert any("short.mp4 has 12 frames" in note and "trains 9" in note for note in dataset.warnings)


def test_content_hash_and_pixel_keys_follow_the_frame_options(clip40: Path, tmp_path: Path) -> None:
    base = load_dataset(clip40, options(frame_count=9))
    assert load_dataset(clip40, options(frame_count=9)).content_hash == base.content_hash
    for change in ({"frame_count": 17}, {"frame_stride": 2}, {"target_fps": 12.0}, {"frame_start": "random"},
                   {"frame_start": "uniform", "clip_windows": 2}):
        other = load_dataset(clip40, options(**{"frame_count": 9, **change}))
        assert other.content_hash != base.content_hash, change
        assert other.pixel_key(other.items[-1]) != base.pixel_key(base.items[0]), change
    windows = load_dataset(clip40, options(frame_count=9, frame_start="uniform", clip_windows=2))
    assert windows.pixel_key(windows.items[0]) == base.pixel_key(base.items[0])  # the same frames
    assert windows.pixel_key(windows.items[0]) != windows.pixel_key(windows.items[1])
    frame_picture(1).save(tmp_path / "still.png")  # a dataset of images keeps its hash whatever the frame options
    assert load_dataset(tmp_path, options(frame_count=33)).content_hash == load_dataset(tmp_path, SMALL).content_hash


# Bad input: named with the reason, then skipped or stopped on as on_bad_file says.


@pytest.fixture()
def bad_clips(tmp_path: Path) -> Path:
    write_video(tmp_path / "good.mp4", 20)
    write_video(tmp_path / "short.mp4", 6)
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "empty.webm").write_bytes(b"")
    whole = write_video(tmp_path / "cut.mp4", 20).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    return tmp_path


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("short.mp4", "has 6 frames, fewer than the 17 a window of 17 frames needs"),
        ("noise.mp4", "is not a video PyAV can read"),
        ("empty.webm", "is empty (0 bytes)"),
        ("cut.mp4", "is not a video PyAV can read"),
    ],
)
def test_a_bad_clip_stops_the_scan_naming_it_and_why(bad_clips: Path, name: str, reason: str) -> None:
    for other in bad_clips.iterdir():
        if other.name not in (name, "good.mp4"):
            other.unlink()
    with pytest.raises(DatasetError) as caught:
        load_dataset(bad_clips, options(frame_count=17))
    message = str(caught.value)
    assert str(bad_clips / name) in message and reason in message
    assert "on_bad_file" in message  # and the fix


def test_bad_clips_are_skipped_with_their_reasons(bad_clips: Path) -> None:
    dataset = load_dataset(bad_clips, options(frame_count=17, on_bad_file="skip"))
    assert [item.image_path.name for item in dataset.items] == ["good.mp4"]
    reasons = {skipped.path.name: skipped.reason for skipped in dataset.skipped}
    assert sorted(reasons) == ["cut.mp4", "empty.webm", "noise.mp4", "short.mp4"]
    assert reasons["empty.webm"] == "is empty (0 bytes)" and reasons["short.mp4"].startswith("has 6 frames")
    shortened = load_dataset(bad_clips, options(frame_count=17, on_bad_file="skip", short_clips="shorten"))
    short = next(item for item in shortened.items if item.image_path.name == "short.mp4")
    assert short.frames == 5 and short.clip.shortened
    assert frame_numbers(shortened.load_frames(short)) == [0, 1, 2, 3, 4]


def test_a_clip_damaged_after_its_header_is_named_when_its_frames_are_read(tmp_path: Path) -> None:
    path = write_video(tmp_path / "walk.webm", 40, codec="libvpx-vp9")
    dataset = load_dataset(tmp_path, options(frame_count=9, frame_start="uniform", clip_windows=2))
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 3])  # the last window is gone
    with pytest.raises(DatasetError, match=r"walk\.webm: ends before frame \d+ .*truncated or damaged"):
        dataset.load_frames(dataset.items[-1])


def test_the_frame_options_are_checked_with_the_field_named() -> None:
    for change, field in (({"frame_count": 0}, "frame_count"), ({"frame_stride": 0}, "frame_stride"),
                          ({"target_fps": -1.0}, "target_fps"), ({"target_fps": float("nan")}, "target_fps"), ({"frame_start": "middle"}, "frame_start"),
                          ({"clip_windows": 0}, "clip_windows"), ({"short_clips": "pad"}, "short_clips")):
        with pytest.raises(DatasetError, match=field):
            options(**change)


def test_numbered_images_are_a_clip_only_with_a_caption_beside_their_folder(tmp_path: Path) -> None:
    write_frame_folder(tmp_path / "steps.v2", 6)  # a dot in the name: the caption is steps.v2.txt
    (tmp_path / "steps.v2.txt").write_text("steps")
    write_frame_folder(tmp_path / "scraped", 3)  # no caption beside it: three images
    frame_picture(7).save(tmp_path / "still.webp")  # a still webp or gif: an image
    frame_picture(8).save(tmp_path / "still.gif")
    write_frame_folder(tmp_path / "5_cat", 3)  # a kohya repeat folder: three images, even with 5_cat.txt
    (tmp_path / "5_cat.txt").write_text("not a clip caption")
    dataset = load_dataset(tmp_path, options(frame_count=5))
    kinds = sorted((item.image_path.relative_to(tmp_path).as_posix(), item.frames) for item in dataset.items)
    assert kinds == [("5_cat/0001.png", 1), ("5_cat/0002.png", 1), ("5_cat/0003.png", 1), ("scraped/0001.png", 1),
                     ("scraped/0002.png", 1), ("scraped/0003.png", 1), ("steps.v2", 5), ("still.gif", 1), ("still.webp", 1)]
    assert next(item for item in dataset.items if item.frames == 5).caption == "steps"


def test_auto_caption_sees_each_clip_windows_first_trained_frame(tmp_path: Path) -> None:
    from trainer_core.captioning import AutoCaptionOptions, caption_dataset

    class FrameNumbers:  # a captioner that says which frame it was shown
        def caption(self, images):
            return [f"frame {frame_number(np.asarray(image))}" for image in images]

    write_video(tmp_path / "walk.mp4", 40)
    write_frame_folder(tmp_path / "steps", 12)
    (tmp_path / "steps.txt").write_text("")
    dataset = load_dataset(tmp_path, options(frame_count=9, frame_start="uniform", clip_windows=2))
    result = caption_dataset(dataset, FrameNumbers(), AutoCaptionOptions(write_sidecar_files=False))
    assert [item.caption for item in result.dataset.items] == ["frame 0", "frame 3", "frame 0", "frame 31"]


def test_a_clips_windows_are_held_out_for_validation_together(tmp_path: Path) -> None:
    from trainer_core.data.validation_split import split_for_validation

    for name in "abcd":
        write_video(tmp_path / f"{name}.mp4", 40)
    dataset = load_dataset(tmp_path, options(frame_count=9, frame_start="uniform", clip_windows=3))
    split = split_for_validation(dataset, 0.25, seed=0)
    held = {item.image_path for item in split.held_out.items}
    trained = {item.image_path for item in split.train.items}
    assert len(held) == 1 and len(split.held_out.items) == 3 and not held & trained and len(trained) == 3
    frames = tmp_path / "frames"
    write_frame_folder(frames / "steps", 6)
    (frames / "steps.txt").write_text("")
    copy = tmp_path / "copy"
    write_frame_folder(copy / "steps", 6)
    (copy / "steps.txt").write_text("")
    with pytest.raises(DatasetError, match="validation_images"):  # the same frames as a training clip
        split_for_validation(load_dataset(frames, options(frame_count=5)), 0.0, 0,
                             load_dataset(copy, options(frame_count=5)))


def test_the_folder_fingerprint_sees_a_frame_rewritten_in_a_frames_folder(tmp_path: Path) -> None:
    import os

    from trainer_core.data.dataset_folder import folder_fingerprint

    write_frame_folder(tmp_path / "steps", 6)
    (tmp_path / "steps.txt").write_text("steps")
    before = folder_fingerprint(tmp_path)
    frame = tmp_path / "steps" / "0003.png"
    frame_picture(40).save(frame)
    stat = frame.stat()
    os.utime(frame, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert folder_fingerprint(tmp_path) != before


@pytest.mark.parametrize(("name", "codec", "bframes"), [("b.mp4", "libx264", 3), ("m.mkv", "libx264", 0),
                                                         ("a.avi", "mpeg4", 0)])
def test_windows_are_exact_with_b_frames_and_in_mkv_and_avi(tmp_path: Path, name: str, codec: str, bframes: int):
    write_video(tmp_path / name, 120, fps=30, codec=codec, gop=30, bframes=bframes)
    dataset = load_dataset(tmp_path, options(frame_count=9, frame_stride=2, frame_start="uniform", clip_windows=3))
    assert [item.clip.indices[0] for item in dataset.items] == [0, 52, 103]
    for item in dataset.items:
        assert frame_numbers(dataset.load_frames(item)) == list(item.clip.indices)


def test_a_variable_rate_clip_gives_the_frames_in_the_order_shown(tmp_path: Path) -> None:
    write_variable_rate_video(tmp_path / "phone.mp4", 90)
    dataset = load_dataset(tmp_path, options(frame_count=9, frame_start="uniform", clip_windows=3))
    assert dataset.items[0].clip.source_frames == 90 and 25 < dataset.items[0].clip.fps < 30  # the average rate
    for item in dataset.items:  # windows 0-8, 40-48, 81-89: frame i is the i-th frame shown
        assert frame_numbers(dataset.load_frames(item)) == list(item.clip.indices)
