"""A folder of images and captions, scanned into a dataset the training loop can trust.

Layout (kohya's): images with same-name ``.txt`` captions (``cat.png`` + ``cat.txt``), in the folder
or in nested folders; a folder named ``N_name`` (``10_cat``) gives the images below it N repeats.
Files and folders whose names start with '.' are ignored (``.ipynb_checkpoints``, macOS ``._x.png``).
A ``<name>_mask.png`` beside an image, or else its alpha channel, is its loss mask (``masks``).

``load_dataset`` reads only image headers, so a folder of thousands of images is scanned in seconds
and never held in memory; ``Dataset.load_image`` decodes one image at its bucket size when the
trainer asks. ``Dataset.content_hash`` lets a trainer reuse cached latents and embeddings: it changes
when an image file (path, size or modification time), a caption, a repeat count or a bucketing option
changes; ``Dataset.pixel_key`` names one image's pixels as trained. ``Dataset.caption_options`` carries
the caption processing the LoadDataset node chose; ``Dataset.caption_for`` applies it.

Clips (videos, animated gif/webp, folders of numbered frames: ``clips``) become one item per frame window
(``clip_items``): ``DatasetItem.frames`` and ``DatasetItem.clip`` say which source frames it trains and
``Dataset.load_frames`` decodes them; an image is a one-frame item. The options are in ``dataset_options``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .buckets import Size, closest_bucket
from .captions import CaptionOptions, process_caption, read_caption_file, tag_frequencies
from .clip_items import ClipInfo, clip_pixel_key, clip_stamp, load_clip_frames, plan_clip
from .clips import ClipHeader, clip_kind, read_clip_header
from .dataset_folder import CLIP_EXTENSIONS, caption_file, find_images, inside, repeat_warnings, repeats_of
from .dataset_options import (  # noqa: F401  (DatasetOptions and its errors are imported from here too)
    ON_BAD_FILE_CHOICES,
    DatasetError,
    DatasetOptions,
    OnBadFile,
)
from .image_files import (
    SUPPORTED_EXTENSIONS,
    ImageFileError,
    decode_rgb,
    read_header,
    resize_to_bucket,
    to_float_array,
)
from .image_fingerprints import pixel_key
from .masks import load_mask, mask_of

logger = logging.getLogger(__name__)

_HOW_TO_LAY_OUT = (
    "Put .png/.jpg/.webp files with same-name .txt captions in it (cat.png + cat.txt); "
    "kohya folders like 10_cat/ give their images 10 repeats. Clips (.mp4/.webm/.mov, animated .gif/.webp, or a "
    "folder of numbered frames 0001.png...) take same-name captions too (walk.mp4 + walk.txt; frames/ + frames.txt)."
)


@dataclass(frozen=True)
class DatasetItem:
    """One training image or clip window: where it is, its caption, the size (and frames) it trains at."""

    image_path: Path
    caption: str  # raw caption text from the .txt ('' if none)
    has_caption: bool
    repeats: int  # from kohya folder names like 10_name, else 1
    size: Size  # original (width, height) after EXIF orientation
    bucket: Size  # training (width, height)
    caption_path: Path | None = None  # the .txt the caption came from, if any
    folder: str = ""  # the kohya folder it belongs to ('10_cat'), '' for images outside one
    mask_path: Path | None = None  # its loss mask, <name>_mask.png beside it (see masks.py)
    alpha_mask: bool = False  # without a mask file: its own alpha channel is its loss mask
    frames: int = 1  # frames this item trains: 1 for an image, the window's length for a clip
    clip: ClipInfo | None = None  # for a clip (image_path is the clip file or frames folder): its exact frames


@dataclass(frozen=True)
class SkippedFile:
    """An image left out because it could not be used (``on_bad_file='skip'``)."""

    path: Path
    reason: str


@dataclass(frozen=True)
class Dataset:
    """The scanned dataset. Pixels are decoded only by ``load_image``."""

    root: Path
    items: tuple[DatasetItem, ...]
    resolution: int
    content_hash: str
    options: DatasetOptions
    caption_options: CaptionOptions = field(default_factory=CaptionOptions)
    warnings: tuple[str, ...] = ()
    skipped: tuple[SkippedFile, ...] = ()
    bad_masks: tuple[SkippedFile, ...] = ()  # mask files left out (their images train without them)

    def load_mask(self, item: DatasetItem) -> np.ndarray | None:
        """The item's loss mask, float32 HxW in [0, 1] at its bucket size (cut as its image is); None without one."""
        if item.mask_path is None and not item.alpha_mask:
            return None
        path, of_image = (item.mask_path, False) if item.mask_path is not None else (item.image_path, True)
        try:
            return load_mask(path, item.size, item.bucket, self.options.center_crop, of_image)
        except (ImageFileError, OSError) as error:
            raise DatasetError(f"mask {path} cannot be read any more ({error}): run LoadDataset again") from error

    def load_image(self, item: DatasetItem) -> np.ndarray:
        """The item's pixels: float32 HxWx3 in [0, 1] at exactly its bucket size (H = bucket[1]).
        For a clip: its first trained frame."""
        if item.clip is not None:
            return self.load_frames(replace(item, frames=1, clip=replace(item.clip, indices=item.clip.indices[:1])))[0]
        try:
            image = decode_rgb(item.image_path, self.options.background, draft_size=item.bucket)
            fitted = resize_to_bucket(image, item.bucket, self.options.center_crop, self.options.background)
        except ImageFileError as error:
            raise DatasetError(str(error)) from error
        except FileNotFoundError as error:
            raise DatasetError(
                f"{item.image_path} was removed after the dataset was loaded: run LoadDataset again"
            ) from error
        return to_float_array(fitted)

    def load_frames(self, item: DatasetItem) -> np.ndarray:
        """The item's frames: float32 [F, H, W, 3] in [0, 1] at its bucket size, F = ``item.frames`` (an image
        gives [1, H, W, 3]). A clip's frames are decoded now, seeking to its window."""
        if item.clip is None:
            return self.load_image(item)[None]
        try:
            options = self.options
            return load_clip_frames(item.image_path, item.clip, item.bucket, options.center_crop, options.background)
        except ImageFileError as error:
            raise DatasetError(str(error)) from error

    @property
    def has_clips(self) -> bool:
        """Whether any item is a clip (an image model trains clips' frames as images)."""
        return any(item.clip is not None for item in self.items)

    def pixel_key(self, item: DatasetItem) -> str:
        """Names ``load_frames``'s pixels for ``item`` (``load_image``'s for an image), for latent caches."""
        if item.clip is not None:
            options = self.options
            return clip_pixel_key(item.image_path, item.clip, item.bucket, options.center_crop, options.background)
        return pixel_key(item.image_path, item.bucket, self.options.center_crop, self.options.background)

    def buckets(self) -> dict[Size, list[int]]:
        """Each bucket size and the indices of the items in it, buckets sorted by size."""
        groups: dict[Size, list[int]] = {}
        for index, item in enumerate(self.items):
            groups.setdefault(item.bucket, []).append(index)
        return dict(sorted(groups.items()))

    def frame_buckets(self) -> dict[tuple[Size, int], list[int]]:
        """Each (bucket size, frame count) and the indices of its items: what can share a batch of clips."""
        groups: dict[tuple[Size, int], list[int]] = {}
        for index, item in enumerate(self.items):
            groups.setdefault((item.bucket, item.frames), []).append(index)
        return dict(sorted(groups.items()))

    @property
    def sample_count(self) -> int:
        """Images per epoch, counting repeats (what 'images x repeats' means in the guides)."""
        return sum(item.repeats for item in self.items)

    def caption_for(self, item: DatasetItem, rng: random.Random | None = None) -> str:
        """The caption text for one step: ``caption_options`` applied (random parts only with ``rng``)."""
        return process_caption(item.caption, self.caption_options, rng)

    def with_caption_options(self, caption_options: CaptionOptions) -> Dataset:
        """The same dataset with other caption processing (the content hash does not change)."""
        return replace(self, caption_options=caption_options)

    def without_files(self, reasons: dict[Path, str]) -> Dataset:
        """The dataset minus the images in ``reasons`` (path -> why), recorded as skipped."""
        kept = [item for item in self.items if item.image_path not in reasons]
        if not kept:
            raise DatasetError(f"No usable image is left in {self.root}: every image was found damaged.")
        skipped = tuple(SkippedFile(path, reason) for path, reason in reasons.items())
        notes = tuple(f"skipped {path}: {reason}" for path, reason in reasons.items())
        return replace(
            self,
            items=tuple(kept),
            content_hash=_content_hash(self.root, kept, self.options),
            skipped=self.skipped + skipped,
            warnings=self.warnings + notes,
        )

    def tag_frequency_metadata(self) -> dict[str, dict[str, int]]:
        """kohya's ``ss_tag_frequency``: per folder, how many captions contain each tag."""
        by_folder: dict[str, list[str]] = {}
        for item in self.items:
            by_folder.setdefault(item.folder or self.root.name, []).append(self.caption_for(item))
        return {folder: tag_frequencies(captions) for folder, captions in by_folder.items()}

    def dataset_dirs_metadata(self) -> dict[str, dict[str, int]]:
        """kohya's ``ss_dataset_dirs``: per folder, its repeats and image count."""
        counts = Counter(item.folder or self.root.name for item in self.items)
        repeats = {item.folder or self.root.name: item.repeats for item in self.items}
        return {name: {"n_repeats": repeats[name], "img_count": count} for name, count in counts.items()}


def load_dataset(
    folder: str | Path, options: DatasetOptions | None = None, *, bad_files: dict[Path, str] | None = None,
    confine_to: Sequence[Path] = (),
) -> Dataset:
    """Scan ``folder`` into a ``Dataset`` (headers and captions only; no pixels are decoded).

    Raises ``DatasetError`` when the folder is missing or holds no usable image, and for the first
    unreadable image when ``options.on_bad_file`` is 'error'. With ``bad_files``, every unreadable image
    goes into it (path -> why) and is left out, whatever ``on_bad_file`` says: the caller decides. With
    ``confine_to`` (resolved folders), no file whose links lead out of them is read (images nor captions).
    """
    options = options or DatasetOptions()
    warnings: list[str] = []
    root, image_paths = _image_paths(folder, warnings, confine_to)
    bucket_sizes = options.bucket_sizes()
    listings: dict[Path, list[str]] = {}
    bad_masks: dict[Path, str] = {}
    items: list[DatasetItem] = []
    skipped: list[SkippedFile] = []
    for path in image_paths:
        try:
            new_items = _items_of(path, root, options, bucket_sizes, warnings, listings, bad_masks, confine_to)
        except ImageFileError as error:
            if bad_files is not None:
                bad_files[path] = error.reason
                continue
            if options.on_bad_file == "error":
                raise DatasetError(str(error)) from error
            skipped.append(SkippedFile(path, error.reason))
            warnings.append(f"skipped {path}: {error.reason}")
            continue
        items.extend(new_items)
    if not items:
        first_path, first_reason = next(iter({**{s.path: s.reason for s in skipped}, **(bad_files or {})}.items()))
        raise DatasetError(
            f"None of the {len(image_paths)} image(s) in {root} could be read (first: {first_path}: "
            f"{first_reason}). Replace the damaged files. {_HOW_TO_LAY_OUT}"
        )
    warnings.extend(repeat_warnings((item.folder, item.repeats) for item in items))
    if options.frames_per_clip != options.frame_count and any(item.clip is not None for item in items):
        warnings.append(f"frame_count {options.frame_count} snapped down to {options.frames_per_clip}: Wan and "
                        "HunyuanVideo take 4k+1 frames (17, 33, 49, 81)")
    for message in warnings:
        logger.warning("LoadDataset: %s", message)
    return Dataset(
        root=root,
        items=tuple(items),
        resolution=options.resolution,
        content_hash=_content_hash(root, items, options),
        options=options,
        warnings=tuple(warnings),
        skipped=tuple(skipped),
        bad_masks=tuple(SkippedFile(path, reason) for path, reason in bad_masks.items()),
    )


def _items_of(
    path: Path, root: Path, options: DatasetOptions, bucket_sizes: tuple[Size, ...], warnings: list[str],
    listings: dict[Path, list[str]], bad_masks: dict[Path, str], confine_to: Sequence[Path],
) -> list[DatasetItem]:
    """The items of one image (one) or clip (one per frame window). Raises ``ImageFileError`` for a bad file."""
    kind = clip_kind(path)
    header = read_clip_header(path, kind) if kind else read_header(path)
    clips = plan_clip(path, header, options) if isinstance(header, ClipHeader) else ()
    caption, caption_path = _caption_of(path, warnings, confine_to)
    folder, repeats = repeats_of(path, root)
    base = DatasetItem(image_path=path, caption=caption, has_caption=bool(caption), repeats=repeats, size=header.size,
                       bucket=closest_bucket(header.size, bucket_sizes), caption_path=caption_path, folder=folder)
    if isinstance(header, ClipHeader):
        if clips[0].shortened:
            warnings.append(f"{path} has {header.frame_count} frames, fewer than frame_count asks: it trains "
                            f"{len(clips[0].indices)} (short_clips 'shorten')")
        return [replace(base, frames=len(clip.indices), clip=clip) for clip in clips]
    mask_path, alpha_mask = mask_of(path, header, listings, warnings, bad_masks, confine_to)
    return [replace(base, mask_path=mask_path, alpha_mask=alpha_mask)]


def _image_paths(folder: str | Path, warnings: list[str], confine_to: Sequence[Path]) -> tuple[Path, list[Path]]:
    """The resolved folder and its images; an error saying how to fill it when it has none."""
    root = Path(folder).expanduser()
    if not root.exists():
        raise DatasetError(f"Dataset folder {root} does not exist. Create it and fill it: {_HOW_TO_LAY_OUT}")
    if not root.is_dir():
        raise DatasetError(f"{root} is a file, not a folder. Give the folder that holds the images: {_HOW_TO_LAY_OUT}")
    root = root.resolve()
    image_paths, other_count = find_images(root, warnings, confine_to)
    if not image_paths:
        found = f"it holds {other_count} file(s), none with an image extension" if other_count else "it is empty"
        raise DatasetError(
            f"No images in dataset folder {root} ({found}; looked for {', '.join(SUPPORTED_EXTENSIONS + CLIP_EXTENSIONS)}). "
            + _HOW_TO_LAY_OUT
        )
    return root, image_paths


def _caption_of(image_path: Path, warnings: list[str], confine_to: Sequence[Path] = ()) -> tuple[str, Path | None]:
    caption_path = caption_file(image_path, ".txt")
    if not caption_path.is_file():
        caption_path = caption_file(image_path, ".TXT")  # case matters on Linux and macOS volumes
        if not caption_path.is_file():
            return "", None
    if confine_to and not inside(caption_path, confine_to):
        warnings.append(f"skipped caption {caption_path}: a link that leads out of the folders this server may read")
        return "", None
    try:
        text, warning = read_caption_file(caption_path)
    except OSError as error:
        warnings.append(
            f"cannot read caption {caption_path} ({error.strerror or error}); the image has no caption"
        )
        return "", None
    if warning:
        warnings.append(warning)
    return text, caption_path


def _content_hash(root: Path, items: list[DatasetItem], options: DatasetOptions) -> str:
    """Changes iff an image file, a caption, a repeat count or a sizing option changes.

    Image files are identified by relative path, byte size and modification time (reading every
    file's bytes would make each scan as slow as a full decode); the folder's location is left out so
    a moved dataset keeps its hash.
    """
    digest = hashlib.sha256()
    sizing = {
        "resolution": options.resolution,
        "buckets": options.bucket_sizes(),
        "center_crop": options.center_crop,
        "background": list(options.background),
    }
    if any(item.clip is not None for item in items):  # only then: hashes of image datasets stay
        sizing["frames"] = [options.frames_per_clip, options.frame_stride, options.target_fps,
                            options.frame_start, options.clip_windows, options.short_clips]
    digest.update(json.dumps(sizing, sort_keys=True).encode())
    for item in items:
        stat = item.image_path.stat()
        record = [
            item.image_path.relative_to(root).as_posix(),
            stat.st_size,
            stat.st_mtime_ns,
            item.caption,
            item.repeats,
            list(item.bucket),
        ]
        if item.mask_path is not None or item.alpha_mask:  # only then: hashes of datasets without masks stay
            mask_stat = (item.mask_path or item.image_path).stat()
            record += [str(item.mask_path and item.mask_path.name), mask_stat.st_size, mask_stat.st_mtime_ns]
        if item.clip is not None:
            record += [clip_stamp(item.image_path), list(item.clip.indices)]
        digest.update(json.dumps(record, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]
