"""Loading captioners from model folders: which kind a folder holds, and the back-ends a style needs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from .base import CaptionerModelError, CaptionStyle, StyledCaptioner, check_backends
from .vision_language import CONFIG_FILE, VisionLanguageOptions, load_vision_language_captioner
from .wd14 import MODEL_FILE, TAGS_FILE, TaggerOptions, load_wd14_tagger

ModelKind = Literal["tagger", "vision_language"]
_KIND_NAMES = {"tagger": "a WD14 tagger", "vision_language": "an image-to-text model"}
_WHAT_GOES_THERE = (
    f"Each captioner is one folder: a WD14 tagger ({MODEL_FILE} + {TAGS_FILE}) or a transformers"
    f" image-to-text model ({CONFIG_FILE}, weights, processor and tokenizer files, e.g. BLIP or Florence-2)."
)


def detect_model_kind(folder: Path) -> ModelKind:
    """'tagger' for a folder with an ONNX model, 'vision_language' for one with a config.json."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CaptionerModelError(f"captioner folder {folder} does not exist. {_WHAT_GOES_THERE}")
    if (folder / MODEL_FILE).is_file() or (folder / TAGS_FILE).is_file():
        return "tagger"
    if (folder / CONFIG_FILE).is_file():
        return "vision_language"
    found = sorted(path.name for path in folder.iterdir() if not path.name.startswith("."))
    listing = ", ".join(found[:8]) + (", ..." if len(found) > 8 else "") if found else "nothing"
    raise CaptionerModelError(
        f"captioner folder {folder} holds {listing}: neither {MODEL_FILE} nor {CONFIG_FILE}. {_WHAT_GOES_THERE}"
    )


def needs_tagger(style: CaptionStyle) -> bool:
    return style in ("tags", "mixed")


def needs_describer(style: CaptionStyle) -> bool:
    return style in ("natural", "mixed")


def build_captioner(
    style: CaptionStyle,
    tagger_folder: Path | None = None,
    describer_folder: Path | None = None,
    tagger_options: TaggerOptions | None = None,
    describer_options: VisionLanguageOptions | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> StyledCaptioner:
    """The captioner for ``style``, loading only the back-ends it uses (a folder it does not use is
    ignored). The tagger always runs through onnxruntime (GPU if ``device`` is CUDA and it works);
    the image-to-text model on ``device`` in ``dtype``."""
    check_backends(style, tagger_folder is not None, describer_folder is not None)
    tagger = describer = None
    if needs_tagger(style) and tagger_folder is not None:
        _expect_kind(tagger_folder, "tagger", "tagger")
    if needs_describer(style) and describer_folder is not None:
        _expect_kind(describer_folder, "vision_language", "caption model")
    if needs_tagger(style) and tagger_folder is not None:
        tagger = load_wd14_tagger(tagger_folder, tagger_options, device)
    if needs_describer(style) and describer_folder is not None:
        try:
            describer = load_vision_language_captioner(describer_folder, describer_options, device, dtype)
        except BaseException:
            if tagger is not None:
                tagger.close()
            raise
    return StyledCaptioner(style, tagger, describer)


def _expect_kind(folder: Path, kind: ModelKind, role: str) -> None:
    found = detect_model_kind(folder)
    if found != kind:
        other = "caption model" if role == "tagger" else "tagger"
        raise CaptionerModelError(
            f"{folder} holds {_KIND_NAMES[found]}, not {_KIND_NAMES[kind]}: choose it as the {other}, and as"
            f" the {role} a folder with {'model.onnx + selected_tags.csv' if kind == 'tagger' else 'config.json'}."
        )
