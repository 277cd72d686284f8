"""The check before training: what is in a dataset and what would spoil the LoRA.

``inspect_dataset`` reads every image once (a few threads; thumbnails decoded at a reduced scale;
per image only a digest and two small hashes are kept, plus a bounded number of thumbnails) and
returns a ``DatasetReport``: counts, bucket histogram, size spread, images below the training size,
missing captions, trigger-word coverage, exact and near duplicates, the most frequent tags, quality
flags (blurry, too dark or bright, heavy JPEG artefacts, far below the training resolution: ``quality``),
and ``problems`` split into errors (the training run would be wasted) and warnings. ``report.summary()``
is the text the node shows; ``contact_sheet.render_contact_sheet`` draws the thumbnails.

``load_checked_dataset`` is the whole LoadDataset step: scan, attach caption options, inspect, and
drop images that fail to decode when ``on_bad_file`` is 'skip'.
"""

from __future__ import annotations

import logging
import os
import statistics
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from .buckets import Size
from .captions import CaptionOptions, normalize_tag, split_tags, tag_frequencies
from .clip_items import read_clip_fingerprint
from .clip_report import clip_summary
from .dataset import Dataset, DatasetError, DatasetItem, DatasetOptions, load_dataset
from .image_fingerprints import (
    ImageFingerprint,
    exact_duplicate_groups,
    near_duplicate_groups,
    read_fingerprint,
)
from .quality import QualityFlag, find_quality_flags, flag_message
from .report_text import format_report, listing

logger = logging.getLogger(__name__)

HEAVY_CROP = 0.35  # fraction of an image's area centre cropping may cut before the report warns
FEW_IMAGES = 5
MAX_NOTES = 10  # scan notes (caption encodings, link loops...) listed one by one
_IMAGES_PER_WORKER = 32  # images handed to the reading threads at a time, per thread


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class ReportOptions:
    """How thoroughly the dataset is checked and how the contact sheet looks."""

    near_duplicate_distance: int = _help(
        "How many of the 64 bits of two pictures' difference hashes may differ for them to count as near"
        " duplicates (resized, re-encoded, lightly edited copies). 0 = only look for exact duplicates.",
        5,
    )
    sheet_images: int = _help("At most this many thumbnails on the contact sheet (evenly chosen).", 48)
    thumbnail_size: int = _help("Side of each contact-sheet cell in pixels.", 128)
    top_tags: int = _help("How many of the most frequent tags the report lists.", 15)
    workers: int = _help("Threads that read images (0 = one per CPU core, at most 8).", 0)
    quality_checks: bool = _help(
        "Measure each picture's sharpness, exposure and JPEG quality and flag blurry, too dark or too bright"
        " pictures and heavy JPEG artefacts. Off: the check reads large JPEGs faster (benchmarks/dataset.py"
        " measures how much); pictures far below the training resolution are flagged either way.",
        True,
    )

    def __post_init__(self) -> None:
        if not 0 <= self.near_duplicate_distance <= 32:
            raise DatasetError(f"near_duplicate_distance must be 0-32, got {self.near_duplicate_distance}")
        if not 0 <= self.sheet_images <= 1024:
            raise DatasetError(f"sheet_images must be 0-1024, got {self.sheet_images}")
        if not 16 <= self.thumbnail_size <= 512:
            raise DatasetError(f"thumbnail_size must be 16-512 pixels, got {self.thumbnail_size}")
        if self.top_tags < 0 or self.workers < 0:
            raise DatasetError(f"top_tags and workers must be 0 or more, got {self.top_tags}, {self.workers}")


@dataclass(frozen=True)
class Problem:
    """Something about the dataset a person should know; an error would waste the training run."""

    severity: Literal["error", "warning"]
    message: str
    files: tuple[Path, ...] = ()


@dataclass(frozen=True)
class SizeSpread:
    """Smallest, median and largest original width and height, and the aspect-ratio range."""

    width: tuple[int, float, int]
    height: tuple[int, float, int]
    aspect: tuple[float, float]  # (narrowest, widest) width / height


@dataclass(frozen=True)
class DatasetReport:
    """The findings of ``inspect_dataset``. Paths are absolute; ``summary()`` gives the text."""

    root: Path
    image_count: int
    sample_count: int  # images x repeats: samples per epoch
    resolution: int
    bucket_histogram: dict[Size, int]
    size_spread: SizeSpread
    below_resolution: tuple[Path, ...]  # smaller than their bucket: upscaled for training
    heavily_cropped: tuple[Path, ...]  # centre crop cuts more than HEAVY_CROP of the picture
    without_caption: tuple[Path, ...]
    trigger_word: str
    with_trigger_word: int  # stored captions that already contain the trigger word
    exact_duplicates: tuple[tuple[Path, ...], ...]
    near_duplicates: tuple[tuple[Path, ...], ...]
    top_tags: tuple[tuple[str, int], ...]  # of the captions as trained (trigger word, blacklist applied)
    damaged: dict[Path, str]  # images that failed to decode -> why
    problems: tuple[Problem, ...] = ()
    sheet_items: tuple[int, ...] = ()  # indices into dataset.items shown on the contact sheet
    thumbnails: tuple[Image.Image, ...] = field(default=(), repr=False, compare=False)
    fingerprints: dict[Path, ImageFingerprint] = field(default_factory=dict, repr=False, compare=False)
    mask_files: tuple[Path, ...] = ()  # images with a <name>_mask file (masks.py)
    alpha_masks: tuple[Path, ...] = ()  # images whose alpha channel is their mask
    bad_masks: dict[Path, str] = field(default_factory=dict)  # mask files left out -> why
    clip_lines: tuple[str, ...] = ()  # clips: counts, lengths, rates, sizes, windows (clip_report)
    quality_flags: tuple[QualityFlag, ...] = ()  # blurry, dark, bright, JPEG artefacts, far too small
    quality_checked: bool = True  # sharpness, exposure and JPEG quality measured (ReportOptions.quality_checks)

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "warning")

    def summary(self) -> str:
        """Plain text for people: what is there, then errors, then warnings."""
        return format_report(self)


def inspect_dataset(
    dataset: Dataset,
    options: ReportOptions | None = None,
    caption_options: CaptionOptions | None = None,
    known: dict[Path, ImageFingerprint] | None = None,
) -> DatasetReport:
    """Read every image once and report what would help or hurt training.

    ``caption_options`` defaults to the dataset's own. Damaged images are reported (as errors), not
    raised. ``known`` holds fingerprints read before (``report.fingerprints``): those images are not
    read again.
    """
    options = options or ReportOptions()
    captioned = dataset if caption_options is None else dataset.with_caption_options(caption_options)
    items = captioned.items
    sheet = _evenly_spaced(len(items), options.sheet_images)
    prints = _fingerprints(items, dataset.options.background, options, set(sheet), known or {})
    trigger = captioned.caption_options.trigger_word.strip()
    first_of: dict[Path, ImageFingerprint] = {}
    for fingerprint in prints:  # a clip's windows count once for duplicates (its first window)
        first_of.setdefault(fingerprint.path, fingerprint)
    per_file = list(first_of.values())
    center_crop = dataset.options.center_crop
    report = DatasetReport(
        root=dataset.root,
        image_count=len(items),
        sample_count=dataset.sample_count,
        resolution=dataset.resolution,
        bucket_histogram={bucket: len(indices) for bucket, indices in dataset.buckets().items()},
        size_spread=_size_spread(items),
        below_resolution=tuple(
            i.image_path for i in items if i.size[0] < i.bucket[0] or i.size[1] < i.bucket[1]
        ),
        heavily_cropped=tuple(
            i.image_path for i in items if center_crop and cropped_fraction(i) > HEAVY_CROP
        ),
        without_caption=tuple(item.image_path for item in items if not item.has_caption),
        trigger_word=trigger,
        with_trigger_word=sum(_mentions(item.caption, trigger) for item in items) if trigger else 0,
        exact_duplicates=exact_duplicate_groups(per_file),
        near_duplicates=near_duplicate_groups(per_file, options.near_duplicate_distance),
        top_tags=tuple(
            list(tag_frequencies(captioned.caption_for(i) for i in items).items())[: options.top_tags]
        ),
        damaged={p.path: p.error for p in prints if p.error is not None},
        sheet_items=tuple(sheet),
        thumbnails=tuple(prints[i].thumbnail or _placeholder(options.thumbnail_size) for i in sheet),
        fingerprints={p.path: p for p in prints},
        mask_files=tuple(item.image_path for item in items if item.mask_path is not None),
        alpha_masks=tuple(item.image_path for item in items if item.mask_path is None and item.alpha_mask),
        bad_masks={bad.path: bad.reason for bad in dataset.bad_masks},
        clip_lines=clip_summary(items, dataset.root),
        quality_flags=find_quality_flags(
            [(p.path, p.quality) for p in prints],
            [(i.image_path, i.size, i.bucket) for i in items],
            center_crop,
            dataset.resolution,
        ),
        quality_checked=options.quality_checks,
    )
    return replace(report, problems=find_problems(report, captioned))


def load_checked_dataset(
    folder: str | Path,
    dataset_options: DatasetOptions,
    caption_options: CaptionOptions,
    report_options: ReportOptions | None = None,
    confine_to: Sequence[Path] = (),
) -> tuple[Dataset, DatasetReport]:
    """Scan, attach the caption options and inspect. In skip mode, images that fail to decode are dropped.

    Raises ``DatasetError`` when the folder has no usable image, and when an image is damaged and
    ``on_bad_file`` is 'error'.
    """
    unreadable: dict[Path, str] = {}  # headers that cannot be read; then files that cannot be decoded
    dataset = load_dataset(folder, dataset_options, bad_files=unreadable, confine_to=confine_to)
    dataset = dataset.with_caption_options(caption_options)
    report = inspect_dataset(dataset, report_options)
    unreadable.update(report.damaged)
    if unreadable:
        if dataset_options.on_bad_file == "error":
            for path, reason in unreadable.items():  # the full list; the message names the first few
                logger.error("LoadDataset: cannot use %s: %s", path, reason)
            raise DatasetError(unreadable_files_message(unreadable, dataset.root))
        for path, reason in unreadable.items():
            logger.warning("LoadDataset: skipped %s: %s", path, reason)
        dataset = dataset.without_files(unreadable)
        report = inspect_dataset(dataset, report_options, known=report.fingerprints)
    return dataset, report


def unreadable_files_message(unreadable: dict[Path, str], root: Path, shown: int = 5) -> str:
    """Every unreadable image at once: the count, the first ``shown`` with their reasons, and the fix (the
    caller puts the full list in the console)."""
    named = "; ".join(f"{listing([path], root=root)}: {reason}" for path, reason in list(unreadable.items())[:shown])
    more = f"; and {len(unreadable) - shown} more (all {len(unreadable)} are listed in ComfyUI's console)" \
        if len(unreadable) > shown else ""
    return (
        f"{len(unreadable)} image(s) in {root} cannot be used: {named}{more}. Re-export or delete them, or set "
        "on_bad_file to 'skip' to train without them."
    )


def find_problems(report: DatasetReport, dataset: Dataset) -> tuple[Problem, ...]:
    """Errors (the run would be wasted) first, then warnings, each naming files and the fix."""
    problems: list[Problem] = []
    count, trigger, root = report.image_count, report.trigger_word, report.root

    def add(severity: Literal["error", "warning"], message: str, files: tuple[Path, ...] = ()) -> None:
        problems.append(Problem(severity, message, files))

    if report.damaged:
        files = tuple(report.damaged)
        add("error", f"{len(files)} image(s) cannot be decoded: {listing(files, root=root)}. "
            "Re-export or delete them, or set on_bad_file to 'skip'.", files)  # fmt: skip
    missing = report.without_caption
    if len(missing) == count and not trigger:
        add("error", f"None of the {count} images has a caption and no trigger word is set: the LoRA would "
            "learn from an empty prompt and have no word to call it by. Add same-name .txt captions "
            "(AutoCaption can write them) or set a trigger word.", missing)  # fmt: skip
    elif missing and not trigger:
        add("warning", f"{len(missing)} of {count} images have no caption: they train with an empty prompt. "
            f"Add .txt captions or set a trigger word. {listing(missing, root=root)}", missing)  # fmt: skip
    elif missing:
        add("warning", f"{len(missing)} of {count} images have no caption: they train with the trigger word "
            f"{trigger!r} alone (fine for one subject; captions help the LoRA tell subject from background). "
            f"{listing(missing, root=root)}", missing)  # fmt: skip
    if count < FEW_IMAGES:
        add("warning", f"Only {count} image(s): the guides use 15-50 for a subject or a style; expect a LoRA "
            "that copies these pictures.")  # fmt: skip
    far_below = {path for flag in report.quality_flags if flag.label == "small" for path in flag.files}
    if files := tuple(path for path in report.below_resolution if path not in far_below):  # the rest: a flag
        add("warning", f"{len(files)} image(s) are smaller than their training size and will be upscaled (soft "
            f"results): {listing(files, root=root)}. Use larger originals or a lower resolution.", files)  # fmt: skip
    for flag in report.quality_flags:
        add("warning", flag_message(flag, [listing([path], root=root) for path in flag.files]), flag.files)
    if report.heavily_cropped:
        files = report.heavily_cropped
        add("warning", f"{len(files)} image(s) lose more than {HEAVY_CROP:.0%} of the picture to centre cropping "
            f"(very wide or tall): {listing(files, root=root)}. Crop them yourself, widen the bucket range or "
            "turn center_crop off.", files)  # fmt: skip
    duplicates = (
        ("identical files", report.exact_duplicates),
        ("near-identical pictures", report.near_duplicates),
    )
    for kind, groups in duplicates:
        if groups:
            files = tuple(path for group in groups for path in group)
            shown = "; ".join(listing(group, 3, root=root) for group in groups[:3])
            more = f" and {len(groups) - 3} more group(s)" if len(groups) > 3 else ""
            add("warning", f"{len(groups)} group(s) of {kind} ({len(files)} images): {shown}{more}. Duplicates "
                "train more often than the rest; keep one of each unless that is what you want.", files)  # fmt: skip
    if report.bad_masks:
        files = tuple(report.bad_masks)
        named = "; ".join(f"{listing([path], root=root)}: {why}" for path, why in list(report.bad_masks.items())[:5])
        add("warning", f"{len(files)} mask file(s) cannot be used, their images train without them: {named}"
            f"{' and more' if len(files) > 5 else ''}.", files)  # fmt: skip
    if dataset.skipped:
        files = tuple(skipped.path for skipped in dataset.skipped)
        add("warning", f"{len(files)} unreadable image(s) left out: {listing(files, root=root)}.", files)
    notes = [note for note in dataset.warnings if not note.startswith("skipped ")]
    for note in notes[:MAX_NOTES]:
        add("warning", note)
    if len(notes) > MAX_NOTES:
        add("warning", f"... and {len(notes) - MAX_NOTES} more notes like these (see the log).")
    return tuple(problems)


def _fingerprints(
    items: tuple[DatasetItem, ...],
    background: tuple[int, int, int],
    options: ReportOptions,
    on_sheet: set[int],
    known: dict[Path, ImageFingerprint],
) -> list[ImageFingerprint]:
    """One fingerprint per item, read by a few threads (Pillow decodes without holding the GIL)."""

    def fingerprint(index: int) -> ImageFingerprint:
        path, clip = items[index].image_path, items[index].clip
        if clip is not None:  # each window of a clip has its own frames: never one read for all
            return read_clip_fingerprint(path, clip, background, options.thumbnail_size, index in on_sheet)
        previous = known.get(path)
        if previous is not None and (previous.thumbnail is not None or index not in on_sheet):
            return previous
        return read_fingerprint(path, background, options.thumbnail_size, index in on_sheet, options.quality_checks)

    workers = options.workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(items) <= 1:
        return [fingerprint(index) for index in range(len(items))]
    prints: list[ImageFingerprint] = []
    window = workers * _IMAGES_PER_WORKER
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lora-lab-report") as pool:
        # A window at a time: a map over every image at once holds a pending task per image, which grows
        # peak memory with the dataset (about 2 KiB per image).
        for start in range(0, len(items), window):
            prints.extend(pool.map(fingerprint, range(start, min(len(items), start + window))))
    return prints


def cropped_fraction(item: DatasetItem) -> float:
    """How much of the picture a cover-and-centre-crop into its bucket cuts away (0-1)."""
    width, height = item.size
    bucket_w, bucket_h = item.bucket
    scale = max(bucket_w / width, bucket_h / height)
    return max(0.0, 1.0 - (bucket_w * bucket_h) / (width * height * scale * scale))


def _mentions(caption: str, trigger: str) -> bool:
    wanted = normalize_tag(trigger)
    if any(normalize_tag(tag) == wanted for tag in split_tags(caption)):
        return True
    return f" {wanted} " in f" {' '.join(normalize_tag(caption).replace(',', ' ').split())} "


def _size_spread(items: tuple[DatasetItem, ...]) -> SizeSpread:
    widths = [item.size[0] for item in items]
    heights = [item.size[1] for item in items]
    aspects = [item.size[0] / item.size[1] for item in items]
    return SizeSpread(
        width=(min(widths), float(statistics.median(widths)), max(widths)),
        height=(min(heights), float(statistics.median(heights)), max(heights)),
        aspect=(min(aspects), max(aspects)),
    )


def _evenly_spaced(count: int, limit: int) -> list[int]:
    if count <= limit:
        return list(range(count))
    if limit <= 0:
        return []
    return sorted({round(i * (count - 1) / max(1, limit - 1)) for i in range(limit)})


def _placeholder(size: int) -> Image.Image:
    return Image.new("RGB", (size, size), (90, 20, 20))
