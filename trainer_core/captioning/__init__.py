"""Captioning: automatic captions for a dataset: WD14 taggers and transformers image-to-text models.

The public API (the AutoCaption node uses only this):

- ``build_captioner(style, tagger_folder, describer_folder, ...)`` -> a ``Captioner`` for the style
  ('tags', 'natural', 'mixed'), loaded from local folders (nothing is downloaded);
- ``caption_dataset(dataset, captioner, AutoCaptionOptions(mode, batch_size, write_sidecar_files))``
  -> ``AutoCaptionResult`` with a new ``Dataset``;
- ``load_wd14_tagger`` / ``load_vision_language_captioner`` for one back-end, ``detect_model_kind``
  to tell a folder's kind, ``CaptionerModelError`` for every model problem a person has to fix.

May use: data.
"""

from __future__ import annotations

from .apply import (
    CAPTION_MODES,
    AutoCaptionOptions,
    AutoCaptionResult,
    CaptionMode,
    ProgressCallback,
    caption_dataset,
    merge_caption,
)
from .base import (
    CAPTION_STYLES,
    STYLE_HELP,
    Captioner,
    CaptionerModelError,
    CaptionStyle,
    StyledCaptioner,
    check_backends,
    combine_captions,
)
from .loading import ModelKind, build_captioner, detect_model_kind, needs_describer, needs_tagger
from .sidecars import BACKUP_FOLDER_NAME, CaptionFileError, SidecarWriter, write_text_atomic
from .vision_language import VisionLanguageCaptioner, VisionLanguageOptions, load_vision_language_captioner
from .wd14 import TaggerOptions, TagScore, WD14Tagger, load_wd14_tagger, prepare_image, select_tags

__all__ = [
    "BACKUP_FOLDER_NAME",
    "CAPTION_MODES",
    "CAPTION_STYLES",
    "STYLE_HELP",
    "AutoCaptionOptions",
    "AutoCaptionResult",
    "CaptionFileError",
    "CaptionMode",
    "Captioner",
    "CaptionerModelError",
    "CaptionStyle",
    "ModelKind",
    "ProgressCallback",
    "SidecarWriter",
    "StyledCaptioner",
    "TagScore",
    "TaggerOptions",
    "VisionLanguageCaptioner",
    "VisionLanguageOptions",
    "WD14Tagger",
    "build_captioner",
    "caption_dataset",
    "check_backends",
    "combine_captions",
    "detect_model_kind",
    "load_vision_language_captioner",
    "load_wd14_tagger",
    "merge_caption",
    "needs_describer",
    "needs_tagger",
    "prepare_image",
    "select_tags",
    "write_text_atomic",
]
