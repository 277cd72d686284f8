"""Caption ``.txt`` files next to the images, written so that no caption a person wrote is lost.

- A file is written only when its text changes, through a temporary file and a rename (never
  half-written).
- A non-empty file is replaced only when the caller says so (AutoCaption's append and overwrite
  modes); its old text is first copied to ``<dataset folder>/.caption_backups/<date-time>/`` under its
  path relative to the dataset folder. One backup folder per run, so a second run never overwrites
  the first run's backups. The folder's name starts with '.', so LoadDataset ignores it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Literal

from ..data.captions import read_caption_file

BACKUP_FOLDER_NAME = ".caption_backups"
WriteOutcome = Literal["written", "unchanged", "kept"]


class CaptionFileError(OSError):
    """A caption file that cannot be read, backed up or written; the message names it."""


class SidecarWriter:
    """Writes the caption files of one dataset folder and remembers what it wrote and backed up."""

    def __init__(self, root: Path, now: Callable[[], datetime] = datetime.now) -> None:
        self.root = Path(root)
        self._now = now
        self.backup_folder: Path | None = None
        self.written: list[Path] = []
        self.backed_up: list[Path] = []

    def write(self, caption_path: Path, text: str, replace_existing: bool) -> WriteOutcome:
        """Make ``caption_path`` hold ``text``.

        'unchanged' when it already does; 'kept' when it holds other, non-empty text and
        ``replace_existing`` is False (nothing is touched); else 'written', after backing up the old
        text if there was any.
        """
        current = self._read(caption_path)
        if current == text:
            return "unchanged"
        if current and not replace_existing:
            return "kept"
        if current:
            self._back_up(caption_path)
        write_text_atomic(caption_path, text)
        self.written.append(caption_path)
        return "written"

    def _read(self, caption_path: Path) -> str | None:
        if not caption_path.exists():
            return None
        try:
            return read_caption_file(caption_path)[0]
        except OSError as error:
            raise CaptionFileError(
                f"cannot read {caption_path} ({error.strerror or error}) to check it before writing a caption:"
                " fix its permissions or move it away"
            ) from error

    def _back_up(self, caption_path: Path) -> None:
        folder = self._backup_folder()
        try:
            relative = caption_path.resolve().relative_to(self.root.resolve())
        except ValueError:  # a caption outside the dataset folder (a linked sub-folder)
            relative = Path(caption_path.name)
        target = folder / relative
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(caption_path, target)
        except OSError as error:
            raise CaptionFileError(
                f"cannot back up {caption_path} to {target} ({error.strerror or error}), so it was left as it"
                " is: make the dataset folder writable or turn write_sidecar_files off"
            ) from error
        self.backed_up.append(caption_path)

    def _backup_folder(self) -> Path:
        if self.backup_folder is None:
            base = self.root / BACKUP_FOLDER_NAME / self._now().strftime("%Y%m%d-%H%M%S")
            folder, counter = base, 2
            while folder.exists():
                folder = base.with_name(f"{base.name}-{counter}")
                counter += 1
            self.backup_folder = folder
        return self.backup_folder


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise CaptionFileError(
            f"cannot write {path} ({error.strerror or error}): make the folder writable or turn"
            " write_sidecar_files off"
        ) from error
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(text.encode("utf-8"))
        os.chmod(temp_name, mode)
        os.replace(temp_name, path)
    except BaseException as error:
        Path(temp_name).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise CaptionFileError(f"cannot write {path} ({error.strerror or error})") from error
        raise
