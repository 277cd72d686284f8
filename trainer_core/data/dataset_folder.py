"""Finding a dataset's image files: a walk that follows links but never loops, in natural order.

Files and folders whose names start with '.' are skipped (``.ipynb_checkpoints``, macOS ``._x.png``).
Mask files (``<name>_mask.png`` beside ``<name>.png``, see ``masks``) are not images to train on.
Clips are found too: video files (``CLIP_EXTENSIONS``), animated .gif/.webp (told apart from still .webp by
``clips``) and folders of numbered frames: a folder holding only images named by numbers (``0001.png``,
``0002.png`` ...; two or more, no captions, no sub-folders) with its caption ``<folder>.txt`` beside it is
one clip, found as the folder's path (musubi-tuner's layout: a video path may be a folder of images). The
caption beside it is what makes it a clip (it may be empty): a folder of numbered images without one, or
a kohya ``N_name`` folder, stays a folder of images.
``folder_fingerprint`` tells whether any image, caption or mask file changed without opening one.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from .image_files import SUPPORTED_EXTENSIONS

_DIGITS = re.compile(r"(\d+)")
_REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")
MASK_SUFFIX = "_mask"
_MANY_REPEATS = 100
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")
CLIP_EXTENSIONS: tuple[str, ...] = (*VIDEO_EXTENSIONS, ".gif")  # and animated .webp, an image extension


def folder_fingerprint(folder: str | Path) -> str:
    """A cheap fingerprint of a dataset folder's files (names, sizes, modification times; no reading).

    It changes when an image, caption or mask file is added, removed, renamed or rewritten: a node can
    tell ComfyUI to run again without scanning the images. '' when the folder does not exist.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        return ""
    digest = hashlib.sha256()
    images, _ = find_images(root, [])
    listings: dict[Path, list[str]] = {}
    for path in images:
        frames = frame_files(path) if path.is_dir() else []  # a frames folder: each frame counts
        for file in (path, caption_file(path, ".txt"), find_mask_file(path, listings), *frames):
            if file is None:
                continue
            try:
                stat = file.stat()
            except OSError:
                continue
            digest.update(
                f"{file.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
            )
    return digest.hexdigest()[:16]


def inside(path: Path, roots: Sequence[Path]) -> bool:
    """Whether ``path``, its links resolved, lies in one of ``roots`` (given resolved)."""
    real = Path(os.path.realpath(path))
    return any(real == root or root in real.parents for root in roots)


def find_images(root: Path, warnings: list[str], confine_to: Sequence[Path] = ()) -> tuple[list[Path], int]:
    """Image files under ``root`` (sorted), following links but never the same folder twice. With
    ``confine_to`` (resolved folders), links leading out of them are not followed, and said."""
    images: list[Path] = []
    other_count = 0
    seen_folders: set[tuple[int, int]] = set()

    def report(error: OSError) -> None:
        warnings.append(f"cannot read folder {error.filename}: {error.strerror or error}")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=report):
        try:
            stat = os.stat(dirpath)
        except OSError as error:
            report(error)
            dirnames[:] = []
            continue
        key = (stat.st_dev, stat.st_ino)
        if key in seen_folders:
            warnings.append(f"skipped {dirpath}: a link back to a folder already scanned (a link loop?)")
            dirnames[:] = []
            continue
        seen_folders.add(key)
        dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
        names = [name for name in filenames if not name.startswith(".")]
        if confine_to:
            for name in [*dirnames, *names]:
                if not inside(Path(dirpath) / name, confine_to):
                    warnings.append(f"skipped {Path(dirpath) / name}: a link that leads out of the folders this "
                                    "server may read")
            dirnames[:] = [name for name in dirnames if inside(Path(dirpath) / name, confine_to)]
            names = [name for name in names if inside(Path(dirpath) / name, confine_to)]
        if dirpath != str(root) and not dirnames and is_frame_folder(names) and _has_caption_beside(dirpath):
            images.append(Path(dirpath))  # a clip: one entry, its frames are not images of their own
            continue
        masks = mask_files(names)
        for name in names:
            if name in masks:
                continue
            if os.path.splitext(name)[1].lower() in SUPPORTED_EXTENSIONS + CLIP_EXTENSIONS:
                images.append(Path(dirpath) / name)
            elif not name.lower().endswith(".txt"):
                other_count += 1
    images.sort(key=lambda path: natural_key(path.relative_to(root).as_posix()))
    return images, other_count


def is_frame_folder(names: Sequence[str]) -> bool:
    """Whether a folder's file ``names`` are a clip's numbered frames: two or more images named by numbers
    (``0001.png``), nothing else."""
    stems = [os.path.splitext(name) for name in names]
    return len(names) >= 2 and all(
        stem.isdigit() and ext.lower() in SUPPORTED_EXTENSIONS for stem, ext in stems
    )


def caption_file(path: Path, extension: str) -> Path:
    """The same-name caption of an image or clip file (``cat.png`` -> ``cat.txt``) or frames folder (``walk/``
    -> ``walk.txt``)."""
    return path.parent / f"{path.name}{extension}" if path.is_dir() else path.with_suffix(extension)


def _has_caption_beside(folder: str) -> bool:
    path = Path(folder)
    return not _REPEAT_FOLDER.match(path.name) and any(
        (path.parent / f"{path.name}{extension}").is_file() for extension in (".txt", ".TXT")
    )


def frame_files(folder: Path) -> list[Path]:
    """A frames folder's frames in number order (``2.png`` before ``10.png``)."""
    names = [name for name in os.listdir(folder) if not name.startswith(".")]
    return [folder / name for name in sorted(names, key=natural_key)]


def mask_files(names: Iterable[str]) -> set[str]:
    """The names among ``names`` (files of one folder) that are masks: ``X_mask.<ext>`` beside an image ``X.<ext>``."""
    images = [name for name in names if os.path.splitext(name)[1].lower() in SUPPORTED_EXTENSIONS]
    stems = {os.path.splitext(name)[0] for name in images}
    return {
        name for name in images
        if os.path.splitext(name)[0].endswith(MASK_SUFFIX) and os.path.splitext(name)[0][: -len(MASK_SUFFIX)] in stems
    }


def find_mask_file(image_path: Path, folder_names: dict[Path, list[str]]) -> Path | None:
    """``<name>_mask.<ext>`` beside ``image_path`` (.png preferred), or None. ``folder_names`` caches each
    folder's listing, so a folder of thousands of images is listed once."""
    folder = image_path.parent
    if folder not in folder_names:
        try:
            folder_names[folder] = sorted(os.listdir(folder))
        except OSError:
            folder_names[folder] = []
    wanted = image_path.stem + MASK_SUFFIX
    candidates = [name for name in folder_names[folder]
                  if os.path.splitext(name)[0] == wanted and os.path.splitext(name)[1].lower() in SUPPORTED_EXTENSIONS]
    candidates.sort(key=lambda name: os.path.splitext(name)[1].lower() != ".png")
    return folder / candidates[0] if candidates else None


def repeats_of(image_path: Path, root: Path) -> tuple[str, int]:
    """The nearest enclosing ``N_name`` folder below ``root`` and its N (1 if there is none)."""
    parts = image_path.parent.relative_to(root).parts
    for index in range(len(parts) - 1, -1, -1):
        match = _REPEAT_FOLDER.match(parts[index])
        if match and int(match.group(1)) > 0:
            return "/".join(parts[: index + 1]), int(match.group(1))
    return "", 1


def repeat_warnings(folder_repeats: Iterable[tuple[str, int]]) -> list[str]:
    """Warnings for ``(folder, repeats)`` pairs whose repeat count looks like a year or an id, not a count."""
    many = sorted({(folder, repeats) for folder, repeats in folder_repeats if repeats > _MANY_REPEATS})
    return [
        f"folder {folder} gives its images {repeats} repeats (kohya's N_name rule); rename it if the number"
        " is not meant as a repeat count (a year, an id)"
        for folder, repeats in many
    ]


def natural_key(text: str) -> list[tuple[int, int | str]]:
    """Sort key that puts img2 before img10 (numbers compared as numbers)."""
    return [(0, int(part)) if part.isdigit() else (1, part.lower()) for part in _DIGITS.split(text) if part]
