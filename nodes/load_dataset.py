"""LoadDataset: a folder of images and captions becomes a checked DATASET, a report and a contact sheet.

The DATASET value is a ``trainer_core.data.dataset.Dataset`` whose ``caption_options`` field carries this
node's caption settings (trigger word, shuffling, dropout, blacklist...): TrainLoRA calls
``dataset.caption_for(item, rng)`` for each step's caption and ``dataset.caption_options.is_random``
to know whether text embeddings can be cached. ``dataset.content_hash`` identifies the pixels and
captions for latent caches. Images are decoded only when the trainer asks (``dataset.load_image``).

All the work is ``trainer_core.data.dataset_report.load_checked_dataset``; this node turns widgets into
options, resolves the folder (relative paths live in ComfyUI's input directory) and wraps the results.
"""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths
import torch
from comfy_api.latest import io, ui

from ..trainer_core.data.captions import CaptionOptions, split_tags
from ..trainer_core.data.dataset import ON_BAD_FILE_CHOICES, DatasetError, DatasetOptions
from ..trainer_core.data.dataset_folder import folder_fingerprint
from ..trainer_core.data.dataset_options import FRAME_START_CHOICES, MAX_FRAME_COUNT, SHORT_CLIP_CHOICES
from ..trainer_core.data.dataset_report import ReportOptions, load_checked_dataset
from ..trainer_core.data.image_files import parse_color
from ..trainer_core.fields import default_of, help_text
from ..trainer_core.pictures.contact_sheet import render_contact_sheet
from . import folder_access
from .types import Dataset

_FOLDER_HELP = (
    "Folder of images with same-name .txt captions (cat.png + cat.txt); kohya folders like 10_cat/ give "
    "their images 10 repeats. Clips too: .mp4/.webm/.mov, animated .gif/.webp, or a folder of numbered frames "
    "(walk/0001.png ...) with walk.txt beside it. A name like 'my_dataset' is looked up in ComfyUI's input folder; an "
    "absolute path is used as typed."
)


def resolve_folder(folder: str) -> Path:
    """The dataset folder: absolute as typed, relative ones inside ComfyUI's input directory."""
    text = folder.strip().strip('"').strip("'")  # "Copy as path" on Windows adds quotes
    path = Path(os.path.expanduser(text))
    if not path.is_absolute():
        path = Path(folder_paths.get_input_directory()) / path
    return path


def _data(name: str) -> dict:
    return {"tooltip": help_text(DatasetOptions, name)}


def _caption(name: str) -> dict:
    return {"tooltip": help_text(CaptionOptions, name)}


def _role(prompt: dict | None, node_id: str | None) -> str:
    """'Train LoRA's regularization_images: ' when this node's dataset feeds that input (errors then say
    which of the two datasets is wrong), else ''."""
    for node in (prompt or {}).values():
        for name, value in node.get("inputs", {}).items():
            if name == "regularization_images" and isinstance(value, list) and str(value[0]) == str(node_id):
                return "Train LoRA's regularization_images (class images): "
    return ""


class LoadDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadDataset",
            display_name="Load Dataset",
            category="LoRA Lab/Dataset",
            description=(
                "Reads a folder of images, clips and .txt captions into a dataset for Train LoRA, checks it (missing "
                "captions, duplicates, small or damaged images, trigger-word coverage; blurry, too dark or bright "
                "and heavily compressed pictures) and shows a contact sheet. "
                "Pixels are read when training needs them, so large folders load quickly."
            ),
            inputs=[
                io.String.Input(
                    "folder", default="", placeholder="my_dataset  or  /absolute/path", tooltip=_FOLDER_HELP
                ),
                io.Int.Input(
                    "resolution",
                    default=default_of(DatasetOptions, "resolution"),
                    min=64,
                    max=4096,
                    step=8,
                    **_data("resolution"),
                ),
                io.Boolean.Input("enable_bucketing", default=True, **_data("enable_bucketing")),
                io.Int.Input("bucket_step", default=64, min=8, max=256, step=8, **_data("bucket_step")),
                io.Int.Input(
                    "min_bucket_side", default=0, min=0, max=8192, step=8, **_data("min_bucket_side")
                ),
                io.Int.Input(
                    "max_bucket_side", default=0, min=0, max=8192, step=8, **_data("max_bucket_side")
                ),
                io.Boolean.Input("center_crop", default=True, **_data("center_crop")),
                io.String.Input(
                    "background",
                    default="white",
                    tooltip=help_text(DatasetOptions, "background") + " A name ('white', 'black') or"
                    " a hex code ('#808080').",
                ),
                io.String.Input("trigger_word", default="", **_caption("trigger_word")),
                io.Boolean.Input("shuffle_tags", default=False, **_caption("shuffle_tags")),
                io.Int.Input(
                    "keep_tokens",
                    default=default_of(CaptionOptions, "keep_tokens"),
                    min=0,
                    max=64,
                    **_caption("keep_tokens"),
                ),
                io.Float.Input(
                    "caption_dropout_rate",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    **_caption("caption_dropout_rate"),
                ),
                io.Float.Input(
                    "tag_dropout_rate",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    **_caption("tag_dropout_rate"),
                ),
                io.String.Input(
                    "blacklist",
                    default="",
                    tooltip=help_text(CaptionOptions, "blacklist") + " Comma-separated.",
                ),
                io.String.Input(
                    "prepend_tags",
                    default="",
                    tooltip=help_text(CaptionOptions, "prepend_tags") + " Comma-separated.",
                ),
                io.String.Input(
                    "append_tags",
                    default="",
                    tooltip=help_text(CaptionOptions, "append_tags") + " Comma-separated.",
                ),
                io.Boolean.Input("underscores_to_spaces", default=True, **_caption("underscores_to_spaces")),
                io.Int.Input("max_tags", default=0, min=0, max=1000, **_caption("max_tags")),
                io.Boolean.Input("deduplicate", default=True, **_caption("deduplicate")),
                io.Combo.Input(
                    "on_bad_file", options=list(ON_BAD_FILE_CHOICES), default="error", **_data("on_bad_file")
                ),
                io.Boolean.Input(
                    "stop_on_errors",
                    default=True,
                    tooltip="Stop here when the check finds a problem that would waste the training run (the message "
                    "lists it). Off: pass the dataset on anyway; the report still lists the problem.",
                ),
                io.Int.Input(
                    "sheet_images",
                    default=default_of(ReportOptions, "sheet_images"),
                    min=0,
                    max=256,
                    tooltip=help_text(ReportOptions, "sheet_images"),
                ),
                # the clip inputs and quality_checks are optional: API graphs written before them still run
                io.Int.Input("frame_count", default=default_of(DatasetOptions, "frame_count"), min=1,
                             max=MAX_FRAME_COUNT, optional=True, **_data("frame_count")),
                io.Int.Input("frame_stride", default=1, min=1, max=100, optional=True, **_data("frame_stride")),
                io.Float.Input("target_fps", default=0.0, min=0.0, max=240.0, step=1.0, optional=True,
                               **_data("target_fps")),
                io.Combo.Input("frame_start", options=list(FRAME_START_CHOICES), default="head", optional=True,
                               **_data("frame_start")),
                io.Int.Input("clip_windows", default=1, min=1, max=64, optional=True, **_data("clip_windows")),
                io.Combo.Input("short_clips", options=list(SHORT_CLIP_CHOICES), default="as_bad_file",
                               optional=True, **_data("short_clips")),
                io.Boolean.Input(
                    "quality_checks",
                    default=default_of(ReportOptions, "quality_checks"),
                    optional=True,
                    tooltip=help_text(ReportOptions, "quality_checks"),
                ),
            ],
            outputs=[
                Dataset.Output(
                    "dataset", tooltip="Images, captions, buckets and caption settings for Train LoRA."
                ),
                io.String.Output(
                    "report",
                    tooltip="The dataset check as text: counts, buckets, tags, errors, warnings (quality flags name "
                    "their files and state their thresholds).",
                ),
                io.Image.Output(
                    "contact_sheet",
                    tooltip="Thumbnails of the dataset; red frame = damaged or "
                    "duplicate, orange = no caption or smaller than the training size, magenta = a quality flag "
                    "(blurry, dark, bright, jpeg, small: written on the picture); blue tint = what a loss mask "
                    "leaves out. A legend underneath.",
                ),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(
        cls,
        folder: str | None,
        background: str | None,
        resolution: int | None,
        enable_bucketing: bool | None,
        bucket_step: int | None,
        min_bucket_side: int | None,
        max_bucket_side: int | None,
    ) -> bool | str:
        # Cheap checks only (no image is opened); inputs linked from other nodes arrive as None.
        if folder is not None:
            if not folder.strip():
                return "Enter the dataset folder: a folder name inside ComfyUI's input folder, or an absolute path."
            try:
                path = resolve_folder(folder)
                folder_access.check_dataset_folder(path, "folder")  # before saying whether it exists
                if not path.is_dir():
                    return f"Dataset folder {path} does not exist (or is not a folder). " + _FOLDER_HELP
            except PermissionError as error:
                return str(error)
            except (OSError, ValueError) as error:  # a name too long, or one the file system cannot hold
                reason = getattr(error, "strerror", None) or str(error)
                return f"folder: {folder[:80]!r}{'...' if len(folder) > 80 else ''} cannot be used ({reason}). " + _FOLDER_HELP
        if background is not None:
            try:
                parse_color(background)
            except ValueError as error:
                return str(error)
        if (resolution is not None and enable_bucketing is not None and bucket_step is not None
                and min_bucket_side is not None and max_bucket_side is not None):
            try:
                DatasetOptions(
                    resolution=resolution,
                    enable_bucketing=enable_bucketing,
                    bucket_step=bucket_step,
                    min_bucket_side=min_bucket_side,
                    max_bucket_side=max_bucket_side,
                )
            except DatasetError as error:
                return str(error)
        return True

    @classmethod
    def fingerprint_inputs(cls, folder: str | None = None, **_: object) -> str | float:
        # Run again when files in the folder change, even if no widget did. A folder linked from
        # another node is not known here: NaN makes ComfyUI run the node every time.
        if folder is None or folder_access.confine_to():
            return float("nan")  # confined: never look into a folder before execute has checked it
        return folder_fingerprint(resolve_folder(folder))

    @classmethod
    def execute(
        cls,
        folder: str,
        resolution: int,
        enable_bucketing: bool,
        bucket_step: int,
        min_bucket_side: int,
        max_bucket_side: int,
        center_crop: bool,
        background: str,
        trigger_word: str,
        shuffle_tags: bool,
        keep_tokens: int,
        caption_dropout_rate: float,
        tag_dropout_rate: float,
        blacklist: str,
        prepend_tags: str,
        append_tags: str,
        underscores_to_spaces: bool,
        max_tags: int,
        deduplicate: bool,
        on_bad_file: str,
        stop_on_errors: bool,
        sheet_images: int,
        frame_count: int = 17,
        frame_stride: int = 1,
        target_fps: float = 0.0,
        frame_start: str = "head",
        clip_windows: int = 1,
        short_clips: str = "as_bad_file",
        quality_checks: bool = True,
    ) -> io.NodeOutput:
        try:
            dataset_options = DatasetOptions(
                resolution=resolution,
                enable_bucketing=enable_bucketing,
                bucket_step=bucket_step,
                min_bucket_side=min_bucket_side,
                max_bucket_side=max_bucket_side,
                center_crop=center_crop,
                background=parse_color(background),
                on_bad_file=on_bad_file,  # type: ignore[arg-type]
                frame_count=frame_count,
                frame_stride=frame_stride,
                target_fps=target_fps,
                frame_start=frame_start,  # type: ignore[arg-type]
                clip_windows=clip_windows,
                short_clips=short_clips,  # type: ignore[arg-type]
            )
            caption_options = CaptionOptions(
                trigger_word=trigger_word.strip(),
                shuffle_tags=shuffle_tags,
                keep_tokens=keep_tokens,
                caption_dropout_rate=caption_dropout_rate,
                tag_dropout_rate=tag_dropout_rate,
                blacklist=split_tags(blacklist),
                prepend_tags=split_tags(prepend_tags),
                append_tags=split_tags(append_tags),
                underscores_to_spaces=underscores_to_spaces,
                max_tags=max_tags,
                deduplicate=deduplicate,
            )
        except ValueError as error:  # DatasetError, CaptionError, or a background colour parse_color refused
            raise DatasetError(f"Load Dataset: {error}") from error
        report_options = ReportOptions(sheet_images=sheet_images, quality_checks=quality_checks)
        return _load_and_check(cls, folder, dataset_options, caption_options, report_options, stop_on_errors)


def _load_and_check(cls, folder: str, dataset_options: DatasetOptions, caption_options: CaptionOptions,
                    report_options: ReportOptions, stop_on_errors: bool) -> io.NodeOutput:
    """Scan and check the folder; stop on the report's errors when asked; the outputs and the sheet's preview."""
    path = resolve_folder(folder)
    folder_access.check_dataset_folder(path, "Load Dataset: folder")
    role = _role(cls.hidden.prompt, cls.hidden.unique_id)
    try:
        dataset, report = load_checked_dataset(path, dataset_options, caption_options, report_options,
                                               folder_access.confine_to())
    except DatasetError as error:
        raise DatasetError(f"{role}{error}") from error
    summary = report.summary()
    if stop_on_errors and report.errors:
        problems = "\n".join(f"- {problem.message}" for problem in report.errors)
        raise DatasetError(
            f"{role}The dataset in {dataset.root} has problems that would waste the training run:\n{problems}\n"
            "Fix them, or turn stop_on_errors off to train anyway."
        )
    sheet = torch.from_numpy(render_contact_sheet(dataset, report)).unsqueeze(0)
    return io.NodeOutput(dataset, summary, sheet, ui=ui.PreviewImage(sheet, cls=cls))
