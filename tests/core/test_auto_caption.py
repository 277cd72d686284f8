"""Captioning a dataset: the modes ignore / append / overwrite, the input never changed, progress and
cancel, and caption files written next to the images without losing a caption a person wrote."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from tools.tiny_captioners import build_tiny_tagger
from trainer_core.captioning import (
    BACKUP_FOLDER_NAME,
    AutoCaptionOptions,
    CaptionFileError,
    SidecarWriter,
    build_captioner,
    caption_dataset,
    merge_caption,
    sidecars,
)
from trainer_core.data.captions import CaptionOptions
from trainer_core.data.dataset import Dataset, DatasetError, DatasetOptions, load_dataset

OPTIONS = DatasetOptions(resolution=64, bucket_step=64)
RED_CAPTION = "my_cat, red_background"


class ColourCaptioner:
    """Names each image's colour; records every batch it is given."""

    def __init__(self, extra: str = "simple_background") -> None:
        self.batches: list[int] = []
        self.extra = extra

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        self.batches.append(len(images))
        names = {(255, 0, 0): "red", (0, 255, 0): "green", (0, 0, 255): "blue"}
        return [
            f"{names.get(image.getpixel((0, 0)), 'grey')}_background, {self.extra}".strip(", ")
            for image in images
        ]


class SilentCaptioner:
    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        return [""] * len(images)


def make_folder(root: Path) -> Path:
    """red.png with a caption; green.png and blue.png without."""
    root.mkdir(parents=True, exist_ok=True)
    for name, colour in (("red", (255, 0, 0)), ("green", (0, 255, 0)), ("blue", (0, 0, 255))):
        Image.new("RGB", (64, 64), colour).save(root / f"{name}.png")
    (root / "red.txt").write_text(RED_CAPTION, encoding="utf-8")
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    return load_dataset(make_folder(tmp_path / "data"), OPTIONS)


def captions_of(dataset: Dataset) -> dict[str, str]:
    return {item.image_path.stem: item.caption for item in dataset.items}


def test_ignore_captions_only_images_without_a_caption(dataset: Dataset) -> None:
    captioner = ColourCaptioner()
    result = caption_dataset(dataset, captioner, AutoCaptionOptions(mode="ignore"))
    assert captions_of(result.dataset) == {
        "blue": "blue_background, simple_background",
        "green": "green_background, simple_background",
        "red": RED_CAPTION,
    }
    assert captioner.batches == [2]  # the captioned image is not even read
    assert [path.name for path in result.kept] == ["red.png"]
    assert all(item.has_caption for item in result.dataset.items)


def test_append_adds_only_tags_the_caption_lacks(dataset: Dataset) -> None:
    result = caption_dataset(dataset, ColourCaptioner(), AutoCaptionOptions(mode="append"))
    assert captions_of(result.dataset)["red"] == "my_cat, red_background, simple_background"
    assert captions_of(result.dataset)["green"] == "green_background, simple_background"


def test_overwrite_replaces_every_caption(dataset: Dataset) -> None:
    result = caption_dataset(dataset, ColourCaptioner(extra=""), AutoCaptionOptions(mode="overwrite"))
    assert captions_of(result.dataset)["red"] == "red_background"
    assert len(result.captioned) == 3


def test_the_input_dataset_is_never_changed(dataset: Dataset) -> None:
    before = (dataset.items, dataset.content_hash, dataset.warnings)
    result = caption_dataset(dataset, ColourCaptioner(), AutoCaptionOptions(mode="overwrite"))
    assert (dataset.items, dataset.content_hash, dataset.warnings) == before
    assert result.dataset is not dataset and result.dataset.content_hash != dataset.content_hash
    assert result.dataset.root == dataset.root and result.dataset.options == dataset.options
    assert [item.bucket for item in result.dataset.items] == [item.bucket for item in dataset.items]


def test_nothing_to_caption_keeps_the_dataset_and_its_hash(dataset: Dataset) -> None:
    first = caption_dataset(dataset, ColourCaptioner()).dataset
    captioner = ColourCaptioner()
    progress: list[tuple[int, int]] = []
    again = caption_dataset(first, captioner, on_progress=lambda done, total: progress.append((done, total)))
    assert captioner.batches == [] and progress == [(0, 0)]
    assert again.dataset.content_hash == first.content_hash and again.captioned == ()


def test_an_image_the_captioner_has_nothing_for_keeps_its_caption(dataset: Dataset) -> None:
    result = caption_dataset(dataset, SilentCaptioner(), AutoCaptionOptions(mode="overwrite"))
    assert captions_of(result.dataset)["red"] == RED_CAPTION
    assert not captions_of(result.dataset)["green"] and len(result.empty) == 3
    assert result.dataset.content_hash == dataset.content_hash


def test_captions_keep_the_datasets_caption_processing(dataset: Dataset) -> None:
    with_trigger = dataset.with_caption_options(CaptionOptions(trigger_word="ohwx"))
    result = caption_dataset(with_trigger, ColourCaptioner())
    green = next(item for item in result.dataset.items if item.image_path.stem == "green")
    assert result.dataset.caption_for(green) == "ohwx, green background, simple background"
    assert "green.png: ohwx, green background, simple background" in result.summary()


def test_progress_counts_batches(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "data")
    for index in range(4):
        Image.new("RGB", (64, 64), (9, 9, 9)).save(folder / f"grey{index}.png")
    dataset = load_dataset(folder, OPTIONS)
    captioner = ColourCaptioner()
    progress: list[tuple[int, int]] = []
    caption_dataset(
        dataset, captioner, AutoCaptionOptions(batch_size=4), lambda d, t: progress.append((d, t))
    )
    assert captioner.batches == [4, 2]
    assert progress == [(0, 2), (1, 2), (2, 2)]


class Cancelled(Exception):
    pass


def test_cancel_stops_after_the_current_batch_and_keeps_its_files(dataset: Dataset) -> None:
    def cancel_after_first(done: int, total: int) -> None:
        if done == 1:
            raise Cancelled

    with pytest.raises(Cancelled):
        caption_dataset(
            dataset,
            ColourCaptioner(),
            AutoCaptionOptions(batch_size=1, write_sidecar_files=True),
            cancel_after_first,
        )
    written = sorted(path.name for path in dataset.root.glob("*.txt"))
    assert written == ["blue.txt", "red.txt"]  # blue (first uncaptioned, natural order) was finished


def test_ignore_writes_new_caption_files_and_touches_no_existing_one(dataset: Dataset) -> None:
    red_txt = dataset.root / "red.txt"
    stamp = red_txt.stat().st_mtime_ns
    result = caption_dataset(dataset, ColourCaptioner(), AutoCaptionOptions(write_sidecar_files=True))
    assert (dataset.root / "green.txt").read_text(encoding="utf-8") == "green_background, simple_background"
    assert red_txt.read_text(encoding="utf-8") == RED_CAPTION and red_txt.stat().st_mtime_ns == stamp
    assert result.backup_folder is None and not (dataset.root / BACKUP_FOLDER_NAME).exists()
    assert sorted(path.name for path in result.written) == ["blue.txt", "green.txt"]
    reloaded = load_dataset(dataset.root, OPTIONS)  # the next Load Dataset reads them
    assert captions_of(reloaded) == captions_of(result.dataset)
    assert not list(dataset.root.glob(".*.tmp"))


def test_overwrite_backs_up_the_caption_it_replaces(dataset: Dataset) -> None:
    result = caption_dataset(
        dataset, ColourCaptioner(), AutoCaptionOptions(mode="overwrite", write_sidecar_files=True)
    )
    assert (dataset.root / "red.txt").read_text(encoding="utf-8") == "red_background, simple_background"
    assert (
        result.backup_folder is not None and result.backup_folder.parent == dataset.root / BACKUP_FOLDER_NAME
    )
    assert (result.backup_folder / "red.txt").read_text(encoding="utf-8") == RED_CAPTION
    assert sorted(path.name for path in result.backup_folder.iterdir()) == ["red.txt"]  # new files need none
    assert "copied to" in result.summary()
    reloaded = load_dataset(dataset.root, OPTIONS)
    assert len(reloaded.items) == 3  # the backup folder is not read as part of the dataset


def test_a_second_overwrite_keeps_the_first_backup(dataset: Dataset) -> None:
    first = caption_dataset(
        dataset, ColourCaptioner(), AutoCaptionOptions(mode="overwrite", write_sidecar_files=True)
    )
    reloaded = load_dataset(dataset.root, OPTIONS)
    second = caption_dataset(
        reloaded,
        ColourCaptioner(extra="solo"),
        AutoCaptionOptions(mode="overwrite", write_sidecar_files=True),
    )
    assert first.backup_folder is not None and second.backup_folder is not None
    assert first.backup_folder != second.backup_folder
    assert (first.backup_folder / "red.txt").read_text(encoding="utf-8") == RED_CAPTION
    assert (second.backup_folder / "red.txt").read_text(
        encoding="utf-8"
    ) == "red_background, simple_background"


def test_unchanged_captions_are_not_rewritten_or_backed_up(dataset: Dataset) -> None:
    caption_dataset(
        dataset, ColourCaptioner(), AutoCaptionOptions(mode="overwrite", write_sidecar_files=True)
    )
    reloaded = load_dataset(dataset.root, OPTIONS)
    stamps = {path.name: path.stat().st_mtime_ns for path in dataset.root.glob("*.txt")}
    again = caption_dataset(
        reloaded, ColourCaptioner(), AutoCaptionOptions(mode="overwrite", write_sidecar_files=True)
    )
    assert again.captioned == () and again.written == () and again.backup_folder is None
    assert {path.name: path.stat().st_mtime_ns for path in dataset.root.glob("*.txt")} == stamps


def test_append_backs_up_and_extends_the_users_file(dataset: Dataset) -> None:
    result = caption_dataset(
        dataset, ColourCaptioner(), AutoCaptionOptions(mode="append", write_sidecar_files=True)
    )
    assert (dataset.root / "red.txt").read_text(
        encoding="utf-8"
    ) == "my_cat, red_background, simple_background"
    assert result.backup_folder is not None
    assert (result.backup_folder / "red.txt").read_text(encoding="utf-8") == RED_CAPTION


def test_a_caption_written_after_loading_is_not_replaced_in_ignore_mode(dataset: Dataset) -> None:
    (dataset.root / "green.txt").write_text("a caption typed meanwhile", encoding="utf-8")
    result = caption_dataset(dataset, ColourCaptioner(), AutoCaptionOptions(write_sidecar_files=True))
    assert (dataset.root / "green.txt").read_text(encoding="utf-8") == "a caption typed meanwhile"
    assert any("green.txt got a caption after Load Dataset" in warning for warning in result.warnings)


def test_an_upper_case_txt_caption_is_the_file_that_is_updated(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "data")
    (folder / "red.txt").rename(folder / "red.TXT")
    dataset = load_dataset(folder, OPTIONS)
    caption_dataset(dataset, ColourCaptioner(), AutoCaptionOptions(mode="append", write_sidecar_files=True))
    assert (folder / "red.TXT").read_text(encoding="utf-8").endswith("simple_background")
    assert not (folder / "red.txt").exists() or os.path.samefile(folder / "red.txt", folder / "red.TXT")


def test_a_non_utf8_caption_is_backed_up_byte_for_byte(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "data")
    original = "café, red_background".encode("cp1252")
    (folder / "red.txt").write_bytes(original)
    dataset = load_dataset(folder, OPTIONS)
    result = caption_dataset(
        dataset, ColourCaptioner(), AutoCaptionOptions(mode="append", write_sidecar_files=True)
    )
    assert result.backup_folder is not None and (result.backup_folder / "red.txt").read_bytes() == original
    assert (folder / "red.txt").read_text(encoding="utf-8") == "café, red_background, simple_background"


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(
    dataset: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace

    def refuse(source: str, target: str) -> None:
        if str(target).endswith("red.txt"):
            raise PermissionError(13, "Permission denied")
        real_replace(source, target)

    monkeypatch.setattr(sidecars.os, "replace", refuse)
    with pytest.raises(CaptionFileError, match=r"cannot write .*red\.txt \(Permission denied\)"):
        caption_dataset(
            dataset, ColourCaptioner(), AutoCaptionOptions(mode="overwrite", write_sidecar_files=True)
        )
    assert (dataset.root / "red.txt").read_text(encoding="utf-8") == RED_CAPTION
    assert not [path for path in dataset.root.iterdir() if path.name.endswith(".tmp")]


def test_backup_folders_of_one_second_do_not_collide(tmp_path: Path) -> None:
    moment = datetime(2025, 1, 2, 3, 4, 5)
    folders = []
    for text in ("one", "two"):
        caption = tmp_path / "a.txt"
        caption.write_text(text)
        writer = SidecarWriter(tmp_path, now=lambda: moment)
        writer.write(caption, text + "!", replace_existing=True)
        folders.append(writer.backup_folder)
    assert [folder.name for folder in folders if folder] == ["20250102-030405", "20250102-030405-2"]


def test_a_damaged_image_is_named_or_skipped_as_the_dataset_chose(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "data")
    dataset = load_dataset(folder, OPTIONS)
    (folder / "green.png").write_bytes((folder / "green.png").read_bytes()[:60])  # truncated after loading
    with pytest.raises(DatasetError, match="green.png"):
        caption_dataset(dataset, ColourCaptioner())
    skipping = load_dataset(
        make_folder(tmp_path / "again"), DatasetOptions(resolution=64, on_bad_file="skip")
    )
    (skipping.root / "green.png").write_bytes(b"")
    result = caption_dataset(skipping, ColourCaptioner())
    assert captions_of(result.dataset)["blue"] and not captions_of(result.dataset)["green"]
    assert any("green.png" in warning for warning in result.warnings)


def test_merge_caption() -> None:
    assert merge_caption("a, b", "b, c", "append") == "a, b, c"
    assert merge_caption("red hair", "red_hair", "append") == "red hair"  # same tag, other spelling
    assert merge_caption("a", "b", "overwrite") == "b"
    assert merge_caption("a", "", "overwrite") == "a"
    assert merge_caption("", "b", "ignore") == "b"


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="mode must be one of ignore, append, overwrite"):
        AutoCaptionOptions(mode="replace")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        AutoCaptionOptions(batch_size=0)


def test_a_real_tagger_captions_a_dataset(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    dataset = load_dataset(make_folder(tmp_path / "data"), OPTIONS)
    captioner = build_captioner("tags", build_tiny_tagger(tmp_path / "tagger"))
    try:
        result = caption_dataset(dataset, captioner, AutoCaptionOptions(mode="overwrite", batch_size=2))
    finally:
        captioner.close()
    captions = captions_of(result.dataset)
    assert captions["red"].startswith("red_background, simple_background, solo")
    assert captions["green"].startswith("hatsune_miku, green_background")


class ClosingCaptioner(ColourCaptioner):
    closed = 0

    def close(self) -> None:
        ClosingCaptioner.closed += 1


def test_a_captioner_loader_is_called_only_when_an_image_needs_a_caption(dataset: Dataset) -> None:
    loads: list[ClosingCaptioner] = []

    def load() -> ClosingCaptioner:
        loads.append(ClosingCaptioner())
        return loads[-1]

    ClosingCaptioner.closed = 0
    first = caption_dataset(dataset, load)
    assert len(loads) == 1 and ClosingCaptioner.closed == 1  # loaded once, closed after
    caption_dataset(first.dataset, load)  # every image has a caption now: no model is loaded
    assert len(loads) == 1


def test_a_loaded_captioner_is_closed_even_when_cancelled(dataset: Dataset) -> None:
    def cancel(done: int, total: int) -> None:
        if done:
            raise Cancelled

    ClosingCaptioner.closed = 0
    with pytest.raises(Cancelled):
        caption_dataset(dataset, ClosingCaptioner, AutoCaptionOptions(batch_size=1), cancel)
    assert ClosingCaptioner.closed == 1
