"""What every captioner back-end offers, and how a caption style combines their outputs.

A back-end turns a list of images into one caption per image (``Captioner.caption``). Two kinds
exist: WD14-style taggers (``wd14.py``: comma-separated booru tags) and transformers image-to-text
models (``vision_language.py``: a sentence). The style the guides teach picks or combines them:

- ``tags`` for SD1.5 (its CLIP text encoder was trained on short, tag-like text),
- ``mixed`` for SDXL: the tags, then the sentence (``red_hair, smiling, a woman laughing in a park``),
- ``natural`` for flow models (Flux, SD3), whose T5 encoders read sentences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from PIL import Image

CaptionStyle = Literal["tags", "natural", "mixed"]
CAPTION_STYLES: tuple[str, ...] = ("tags", "natural", "mixed")
STYLE_HELP = (
    "What the captions look like, as the guides teach per model family: 'tags' (comma-separated tags"
    " from a WD14 tagger) for SD1.5; 'mixed' (the tags, then a sentence from an image-to-text model) for"
    " SDXL; 'natural' (a sentence) for flow models such as Flux and SD3."
)


class CaptionerModelError(ValueError):
    """A captioner model that is missing, incomplete or cannot be loaded; the message names the
    folder, the files it expects and what to do."""


@runtime_checkable
class Captioner(Protocol):
    """Anything that captions images: one caption per image, in order ('' when it has nothing to say)."""

    def caption(self, images: Sequence[Image.Image]) -> list[str]: ...


def combine_captions(style: CaptionStyle, tags: str, sentence: str) -> str:
    """The caption a style makes from a tagger's tags and a captioner's sentence (either may be '')."""
    if style == "tags":
        return tags.strip()
    if style == "natural":
        return sentence.strip()
    return ", ".join(part for part in (tags.strip(), sentence.strip()) if part)


def check_backends(style: str, has_tagger: bool, has_describer: bool) -> None:
    """Raise ``CaptionerModelError`` unless the back-ends ``style`` needs are there."""
    if style not in CAPTION_STYLES:
        raise CaptionerModelError(f"caption style must be one of {', '.join(CAPTION_STYLES)}, got {style!r}")
    if style in ("tags", "mixed") and not has_tagger:
        raise CaptionerModelError(
            f"caption style '{style}' needs a WD14 tagger (a folder with model.onnx and selected_tags.csv):"
            " choose one, or use style 'natural' with an image-to-text model"
        )
    if style in ("natural", "mixed") and not has_describer:
        raise CaptionerModelError(
            f"caption style '{style}' needs an image-to-text model (a transformers folder with config.json,"
            " weights and processor files, such as BLIP or Florence-2): choose one, or use style 'tags' with"
            " a WD14 tagger"
        )


@dataclass
class StyledCaptioner:
    """A ``Captioner`` that runs the back-ends a style needs and combines their captions.

    ``tagger`` is needed by 'tags' and 'mixed', ``describer`` (an image-to-text model) by 'natural'
    and 'mixed'; a missing one raises ``CaptionerModelError`` here, before any image is read.
    """

    style: CaptionStyle
    tagger: Captioner | None = None
    describer: Captioner | None = None

    def __post_init__(self) -> None:
        check_backends(self.style, self.tagger is not None, self.describer is not None)

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        count = len(images)
        tags = (
            self.tagger.caption(images)
            if self.tagger is not None and self.style != "natural"
            else [""] * count
        )
        sentences = (
            self.describer.caption(images)
            if self.describer is not None and self.style != "tags"
            else [""] * count
        )
        return [
            combine_captions(self.style, tag, sentence) for tag, sentence in zip(tags, sentences, strict=True)
        ]

    def close(self) -> None:
        """Release the back-ends' models (GPU memory); the captioner cannot be used afterwards."""
        for backend in (self.tagger, self.describer):
            close = getattr(backend, "close", None)
            if callable(close):
                close()
