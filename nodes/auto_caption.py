"""AutoCaption: captions a DATASET with a tagger and/or an image-to-text model from models/captioners.

Captioner models live one folder each under ``<ComfyUI>/models/captioners/`` (registered here with
``folder_paths`` as "captioners", so ``extra_model_paths.yaml`` can add more places): a WD14 tagger
(``model.onnx`` + ``selected_tags.csv``) or a transformers image-to-text model (BLIP, GIT,
Florence-2: ``config.json``, weights, processor files). Nothing is downloaded. All the work is
``trainer_core.captioning``; this node resolves the folders, picks device and dtype, forwards
progress and Cancel, and frees memory after.
"""

from __future__ import annotations

import os
from pathlib import Path

import comfy.model_management as model_management
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io, ui

from ..trainer_core.captioning import (
    CAPTION_MODES,
    CAPTION_STYLES,
    STYLE_HELP,
    AutoCaptionOptions,
    CaptionerModelError,
    StyledCaptioner,
    TaggerOptions,
    VisionLanguageOptions,
    build_captioner,
    caption_dataset,
    check_backends,
    needs_describer,
    needs_tagger,
)
from ..trainer_core.fields import default_of, help_text
from . import folder_access
from .types import Dataset

CAPTIONER_FOLDER = "captioners"
NONE = "none"
PREVIEW_CAPTIONS = 8
_WHAT_GOES_THERE = (
    "Put one folder per model there: a WD14 tagger (model.onnx + selected_tags.csv, e.g. the files of"
    " SmilingWolf/wd-vit-tagger-v3) or a transformers image-to-text model (config.json, weights, processor"
    " and tokenizer files, e.g. Salesforce/blip-image-captioning-base or Florence-2), then refresh the page."
)


def register_captioner_folder() -> None:
    """Make ``models/captioners`` a model folder ComfyUI knows (idempotent)."""
    folder_paths.add_model_folder_path(
        CAPTIONER_FOLDER, os.path.join(folder_paths.models_dir, CAPTIONER_FOLDER)
    )


register_captioner_folder()


def captioner_roots() -> list[Path]:
    return [Path(path) for path in folder_paths.get_folder_paths(CAPTIONER_FOLDER)]


def installed_captioners() -> list[str]:
    """The model folders under every registered captioners folder (first one wins a name)."""
    names: list[str] = []
    for root in captioner_roots():
        if not root.is_dir():
            continue
        for entry in sorted(root.iterdir(), key=lambda path: path.name.lower()):
            if entry.is_dir() and not entry.name.startswith(".") and entry.name not in names:
                names.append(entry.name)
    return names


def resolve_captioner(name: str) -> Path:
    """The folder of the captioner called ``name``; a clear error when it is not installed."""
    for root in captioner_roots():
        candidate = root / name
        if name and candidate.is_dir() and candidate.resolve().parent == root.resolve():
            return candidate
    places = ", ".join(str(root) for root in captioner_roots())
    raise CaptionerModelError(f"No captioner folder '{name}' in {places}. {_WHAT_GOES_THERE}")


def _first_with(names: list[str], marker: str) -> str:
    for name in names:
        for root in captioner_roots():
            if (root / name / marker).is_file():
                return name
    return NONE


def _chosen(name: str | None) -> Path | None:
    return None if name in (None, "", NONE) else resolve_captioner(name)


def _devices() -> tuple[str, torch.dtype]:
    device = model_management.get_torch_device()
    if device.type == "cuda" and model_management.should_use_fp16(device):
        return str(device), torch.float16
    return str(device), torch.float32


class AutoCaption(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        installed = installed_captioners()
        choices = [NONE, *installed]
        return io.Schema(
            node_id="AutoCaption",
            display_name="Auto Caption",
            category="LoRA Lab/Dataset",
            description=(
                "Captions the dataset's images with a WD14 tagger and/or an image-to-text model (BLIP, GIT,"
                " Florence-2) in ComfyUI's models/captioners folder. Keeps, extends or replaces existing captions, and can save them"
                " as .txt files next to the images (replaced files are backed up first). Nothing is downloaded."
            ),
            inputs=[
                Dataset.Input("dataset", tooltip="The dataset from Load Dataset."),
                io.Combo.Input("style", options=list(CAPTION_STYLES), default="tags", tooltip=STYLE_HELP),
                io.Combo.Input(
                    "tagger",
                    options=choices,
                    default=_first_with(installed, "model.onnx"),
                    tooltip="WD14 tagger folder (model.onnx + selected_tags.csv) in models/captioners; used by styles"
                    " 'tags' and 'mixed'.",
                ),
                io.Combo.Input(
                    "caption_model",
                    options=choices,
                    default=_first_with(installed, "config.json"),
                    tooltip="Image-to-text model folder (transformers: BLIP, GIT, Florence-2) in models/captioners; used"
                    " by styles 'natural' and 'mixed'.",
                ),
                io.Combo.Input(
                    "mode",
                    options=list(CAPTION_MODES),
                    default="ignore",
                    tooltip=help_text(AutoCaptionOptions, "mode"),
                ),
                io.Float.Input(
                    "general_threshold",
                    default=default_of(TaggerOptions, "general_threshold"),
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip=help_text(TaggerOptions, "general_threshold"),
                ),
                io.Float.Input(
                    "character_threshold",
                    default=default_of(TaggerOptions, "character_threshold"),
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip=help_text(TaggerOptions, "character_threshold"),
                ),
                io.Int.Input(
                    "max_tags",
                    default=default_of(TaggerOptions, "max_tags"),
                    min=0,
                    max=500,
                    tooltip=help_text(TaggerOptions, "max_tags"),
                ),
                io.String.Input("prompt", default="", tooltip=help_text(VisionLanguageOptions, "prompt")),
                io.Int.Input(
                    "max_new_tokens",
                    default=default_of(VisionLanguageOptions, "max_new_tokens"),
                    min=1,
                    max=1024,
                    tooltip=help_text(VisionLanguageOptions, "max_new_tokens"),
                ),
                io.Int.Input(
                    "batch_size",
                    default=default_of(AutoCaptionOptions, "batch_size"),
                    min=1,
                    max=256,
                    tooltip=help_text(AutoCaptionOptions, "batch_size"),
                ),
                io.Boolean.Input(
                    "write_sidecar_files",
                    default=False,
                    tooltip=help_text(AutoCaptionOptions, "write_sidecar_files"),
                ),
                io.Boolean.Input(
                    "trust_remote_code",
                    default=False,
                    tooltip=help_text(VisionLanguageOptions, "trust_remote_code"),
                ),
            ],
            outputs=[
                Dataset.Output(
                    "captioned",
                    display_name="dataset",
                    tooltip="The dataset with the new captions, for Train LoRA.",
                ),
                io.String.Output(
                    "captions", tooltip="What was done and some captions, as training will see them."
                ),
            ],
            is_output_node=True,  # shows its captions in the canvas, and writes caption files
        )

    @classmethod
    def validate_inputs(
        cls, style: str | None, tagger: str | None, caption_model: str | None, mode: str | None
    ) -> bool | str:
        # Linked inputs arrive as None; V3 combos are not checked against their options by ComfyUI.
        if mode is not None and mode not in CAPTION_MODES:
            return f"mode must be one of {', '.join(CAPTION_MODES)}, got {mode!r}"
        if style is None or tagger is None or caption_model is None:
            return True
        try:
            check_backends(style, tagger != NONE, caption_model != NONE)
            if needs_tagger(style):  # type: ignore[arg-type]
                _chosen(tagger)
            if needs_describer(style):  # type: ignore[arg-type]
                _chosen(caption_model)
        except CaptionerModelError as error:
            where = ", ".join(str(root) for root in captioner_roots())
            if not installed_captioners():
                return f"{error}. No captioner is installed in {where}. {_WHAT_GOES_THERE}"
            return str(error)
        return True

    @classmethod
    def execute(
        cls,
        dataset: object,
        style: str,
        tagger: str,
        caption_model: str,
        mode: str,
        general_threshold: float,
        character_threshold: float,
        max_tags: int,
        prompt: str,
        max_new_tokens: int,
        batch_size: int,
        write_sidecar_files: bool,
        trust_remote_code: bool,
    ) -> io.NodeOutput:
        if write_sidecar_files:  # on a server others reach, only inside the folders LoRA Lab may write
            folder_access.check_dataset_folder(Path(getattr(dataset, "root", "")), "Auto Caption: write_sidecar_files")
        options = AutoCaptionOptions(
            mode=mode,  # type: ignore[arg-type]
            batch_size=batch_size,
            write_sidecar_files=write_sidecar_files,
        )
        tagger_options = TaggerOptions(general_threshold, character_threshold, max_tags)
        describer_options = VisionLanguageOptions(
            prompt=prompt, max_new_tokens=max_new_tokens, trust_remote_code=trust_remote_code
        )
        tagger_folder = _chosen(tagger) if needs_tagger(style) else None  # type: ignore[arg-type]
        describer_folder = _chosen(caption_model) if needs_describer(style) else None  # type: ignore[arg-type]
        check_backends(style, tagger_folder is not None, describer_folder is not None)
        device, dtype = _devices()

        progress: list[comfy.utils.ProgressBar] = []

        def on_progress(done: int, total: int) -> None:
            model_management.throw_exception_if_processing_interrupted()
            if not progress:
                progress.append(comfy.utils.ProgressBar(max(total, 1)))
            progress[0].update_absolute(done, max(total, 1))

        def load_captioner() -> StyledCaptioner:  # called only if an image needs a caption
            if describer_folder is not None and device.startswith("cuda"):
                model_management.free_memory(
                    _folder_bytes(describer_folder) * 1.5, model_management.get_torch_device()
                )
            return build_captioner(
                style,  # type: ignore[arg-type]
                tagger_folder,
                describer_folder,
                tagger_options,
                describer_options,
                device=device,
                dtype=dtype,
            )

        try:
            result = caption_dataset(dataset, load_captioner, options, on_progress)  # type: ignore[arg-type]
        finally:
            model_management.soft_empty_cache()
        text = f"Auto Caption ({style}, mode '{mode}'): " + result.summary(PREVIEW_CAPTIONS)
        return io.NodeOutput(result.dataset, text, ui=ui.PreviewText(text))


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
