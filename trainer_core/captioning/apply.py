"""Captioning a dataset: which images get a caption, how it joins the one they have, and the files.

Modes (the guides' names):

- ``ignore``: images that have a caption keep it; only uncaptioned images are captioned.
- ``append``: the new caption is added after the existing one (tags already there are not repeated).
- ``overwrite``: the new caption replaces the existing one.

An image the captioner has nothing to say about keeps what it had. The input ``Dataset`` is never
changed: ``caption_dataset`` returns a new one (``dataclasses.replace``), whose ``content_hash``
changes when a caption does. With ``write_sidecar_files`` the captions also go to ``.txt`` files next
to the images (``sidecars.py``: written per batch, atomically, never replacing a caption a person wrote
except in append/overwrite mode, and then only after a backup).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from ..data.buckets import Size
from ..data.captions import normalize_tag, split_tags
from ..data.clip_items import first_frame
from ..data.dataset import Dataset, DatasetError, DatasetItem
from ..data.image_files import ImageFileError, decode_rgb
from .base import Captioner
from .sidecars import SidecarWriter

logger = logging.getLogger(__name__)

CaptionMode = Literal["ignore", "append", "overwrite"]
CAPTION_MODES: tuple[str, ...] = ("ignore", "append", "overwrite")
ProgressCallback = Callable[[int, int], None]
_DECODE_SIDE = 1024  # captioners look at 384-768 px: JPEGs are decoded at a reduced scale above this


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class AutoCaptionOptions:
    """What happens to the captions an image already has, and where new ones go."""

    mode: CaptionMode = _help(
        "Images that already have a caption: 'ignore' keeps their caption and captions only the others;"
        " 'append' adds the new caption after theirs; 'overwrite' replaces it.",
        "ignore",
    )
    batch_size: int = _help("Images captioned at once: more is faster on a GPU and needs more memory.", 4)
    write_sidecar_files: bool = _help(
        "Also save each new caption as a .txt file next to its image, so the next Load Dataset reads it."
        " A caption file is replaced only in append/overwrite mode, and its old text is first copied to"
        " .caption_backups/<date-time>/ in the dataset folder.",
        False,
    )

    def __post_init__(self) -> None:
        if self.mode not in CAPTION_MODES:
            raise ValueError(f"mode must be one of {', '.join(CAPTION_MODES)}, got {self.mode!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class AutoCaptionResult:
    """The captioned dataset and what was done to get it."""

    dataset: Dataset
    captioned: tuple[Path, ...]  # images whose caption changed
    kept: tuple[Path, ...]  # images that kept their caption (mode ignore)
    empty: tuple[Path, ...]  # images the captioner had nothing to say about
    written: tuple[Path, ...]  # caption files written
    backup_folder: Path | None  # where replaced caption files were copied, if any were
    warnings: tuple[str, ...]

    def summary(self, preview_count: int = 8) -> str:
        """A few lines for people: counts, files, warnings, then captions as training will see them."""
        total = len(self.dataset.items)
        lines = [f"Captioned {len(self.captioned)} of {total} images."]
        if self.kept:
            lines.append(f"Kept the existing caption of {_count(len(self.kept), 'image')} (mode 'ignore').")
        if self.empty:
            lines.append(
                f"The captioner found nothing to say about {_count(len(self.empty), 'image')}; they kept"
                " what they had."
            )
        if self.written:
            lines.append(f"Wrote {_count(len(self.written), 'caption file')} next to the images.")
        if self.backup_folder is not None:
            lines.append(f"The caption files it replaced were copied to {self.backup_folder} first.")
        lines.extend(f"Warning: {warning}" for warning in self.warnings)
        changed = set(self.captioned)
        shown = [item for item in self.dataset.items if item.image_path in changed] or list(
            self.dataset.items
        )
        if shown and preview_count > 0:
            lines.append("")
            lines.append("Captions as training will see them:")
            for item in shown[:preview_count]:
                name = item.image_path.relative_to(self.dataset.root).as_posix()
                lines.append(f"{name}: {self.dataset.caption_for(item) or '(no caption)'}")
            if len(shown) > preview_count:
                lines.append(f"... and {len(shown) - preview_count} more")
        return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def merge_caption(existing: str, new: str, mode: CaptionMode) -> str:
    """The caption an image ends up with: ``new`` joined to ``existing`` as ``mode`` says.

    An empty ``new`` keeps ``existing``. In append mode, tags of ``new`` that ``existing`` already
    has (ignoring case and '_' vs ' ') are left out.
    """
    existing, new = existing.strip(), new.strip()
    if not new:
        return existing
    if mode == "ignore" and existing:
        return existing
    if mode != "append" or not existing:
        return new
    present = {normalize_tag(tag) for tag in split_tags(existing)}
    added = [tag for tag in split_tags(new) if normalize_tag(tag) not in present]
    return ", ".join([existing, *added]) if added else existing


def caption_dataset(
    dataset: Dataset,
    captioner: Captioner | Callable[[], Captioner],
    options: AutoCaptionOptions | None = None,
    on_progress: ProgressCallback | None = None,
) -> AutoCaptionResult:
    """Caption ``dataset``; a new ``Dataset`` comes back, the input is untouched.

    ``captioner`` is a ``Captioner``, or a function that loads one: it is then called only if some
    image needs a caption (in mode 'ignore' a fully captioned dataset loads no model), and the
    captioner's ``close()`` is called at the end, whatever happens.
    ``on_progress(done_batches, total_batches)`` is called before the first batch (before the model is
    loaded) and after each one; raising from it (ComfyUI's Cancel) stops captioning, and the caption
    files of the finished batches stay written. Unreadable images stop with a ``DatasetError``, or are
    left as they are with a warning when the dataset was loaded with ``on_bad_file='skip'``.
    """
    options = options or AutoCaptionOptions()
    items = list(dataset.items)
    todo = [index for index, item in enumerate(items) if options.mode != "ignore" or not item.has_caption]
    chosen = set(todo)
    kept = tuple(item.image_path for index, item in enumerate(items) if index not in chosen)
    batches = [todo[start : start + options.batch_size] for start in range(0, len(todo), options.batch_size)]
    writer = SidecarWriter(dataset.root) if options.write_sidecar_files else None
    warnings: list[str] = []
    captioned: list[Path] = []
    empty: list[Path] = []

    if on_progress is not None:
        on_progress(0, len(batches))
    owned = isinstance(captioner, type) or not isinstance(captioner, Captioner)  # a class is a loader too
    loaded: Captioner | None = None if owned else captioner  # type: ignore[assignment]
    try:
        for done, batch in enumerate(batches, start=1):
            readable, images = _decode_batch(dataset, [items[index] for index in batch], warnings)
            if images and loaded is None:
                loaded = captioner()  # type: ignore[operator]
            captions = loaded.caption(images) if images and loaded is not None else []
            if len(captions) != len(images):
                raise RuntimeError(f"the captioner gave {len(captions)} captions for {len(images)} images")
            for index, caption in zip([batch[position] for position in readable], captions, strict=True):
                item = items[index]
                if not caption.strip():
                    empty.append(item.image_path)
                    continue
                text = merge_caption(item.caption, caption, options.mode)
                if text == item.caption:
                    continue
                items[index] = _with_caption(item, text, writer, options.mode, warnings)
                captioned.append(item.image_path)
            if on_progress is not None:
                on_progress(done, len(batches))
    finally:
        close = getattr(loaded, "close", None)
        if owned and callable(close):
            close()

    for message in warnings:
        logger.warning("Auto Caption: %s", message)
    new_dataset = replace(
        dataset,
        items=tuple(items),
        content_hash=_content_hash(dataset, items) if captioned else dataset.content_hash,
        warnings=dataset.warnings + tuple(warnings),
    )
    return AutoCaptionResult(
        dataset=new_dataset,
        captioned=tuple(captioned),
        kept=kept,
        empty=tuple(empty),
        written=tuple(writer.written) if writer else (),
        backup_folder=writer.backup_folder if writer and writer.backed_up else None,
        warnings=tuple(warnings),
    )


def _with_caption(
    item: DatasetItem, text: str, writer: SidecarWriter | None, mode: CaptionMode, warnings: list[str]
) -> DatasetItem:
    caption_path = None  # the caption no longer comes from a file, unless it is written to one
    if writer is not None:
        path = item.caption_path or item.image_path.with_suffix(".txt")
        outcome = writer.write(path, text, replace_existing=mode != "ignore")
        if outcome == "kept":
            warnings.append(
                f"{path} got a caption after Load Dataset read the folder; it was left as it is (run Load"
                " Dataset again to use it, or choose mode 'overwrite')"
            )
        else:
            caption_path = path
    return replace(item, caption=text, has_caption=True, caption_path=caption_path)


def _decode_batch(
    dataset: Dataset, batch: Sequence[DatasetItem], warnings: list[str]
) -> tuple[list[int], list[Image.Image]]:
    readable: list[int] = []
    images: list[Image.Image] = []
    for position, item in enumerate(batch):
        try:
            background = dataset.options.background
            images.append(first_frame(item.image_path, item.clip, background) if item.clip is not None  # a clip: its
                          else decode_rgb(item.image_path, background, _draft_size(item.size)))  # first trained frame
        except ImageFileError as error:
            if dataset.options.on_bad_file != "skip":
                raise DatasetError(str(error)) from error
            warnings.append(f"not captioned: {error}")
            continue
        except FileNotFoundError as error:
            raise DatasetError(
                f"{item.image_path} was removed after the dataset was loaded: run Load Dataset again"
            ) from error
        readable.append(position)
    return readable, images


def _draft_size(size: Size) -> Size:
    """The smallest (width, height) to decode at: the shorter side at least ``_DECODE_SIDE``."""
    width, height = size
    scale = min(1.0, _DECODE_SIDE / max(1, min(width, height)))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _content_hash(dataset: Dataset, items: Sequence[DatasetItem]) -> str:
    """The loaded dataset's hash combined with the new captions: changes iff a caption changes."""
    digest = hashlib.sha256(dataset.content_hash.encode())
    digest.update(json.dumps([item.caption for item in items], ensure_ascii=False).encode())
    return digest.hexdigest()[:16]
