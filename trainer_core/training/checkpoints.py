"""Checkpoints during training and the state a run resumes from.

A checkpoint is a LoRA file LoraLoader loads (``<stem>_step000100.safetensors``) plus one resume state
(``<stem>.lora_lab_state``: adapter weights, optimizer, loss scaler, random streams, step counter and
loss history), written atomically. The state is written first, so a run stopped between the two files
leaves no LoRA without its resume state (the LoRA is then written again on resume, from the state). The
state is read with ``torch.load(weights_only=True)``: no code in it can run.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..adapters.export import disk_full_message, is_disk_full


class ResumeError(RuntimeError):
    """A resume state that cannot continue this run (with what to do)."""


@dataclass(frozen=True)
class CheckpointPolicy:
    """Where and how often training writes loadable LoRA files and its resume state."""

    folder: Path
    stem: str
    every: int = 0  # steps between checkpoints; 0 = only when training is cancelled
    keep_last: int = 0  # keep this many step checkpoints (0 = all)

    def lora_path(self, step: int) -> Path:
        return self.folder / f"{self.stem}_step{step:06d}.safetensors"

    @property
    def state_path(self) -> Path:
        return self.folder / f"{self.stem}.lora_lab_state"



STATE_FORMAT = "lora_lab_training_state_v1"


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    """Write the resume state atomically (temporary file, then rename); on a full disk an ``OSError`` that
    names the state's own size and the space free, with the state of the last checkpoint left as it was."""
    buffer = io.BytesIO()
    torch.save({"format": STATE_FORMAT, **state}, buffer)
    data = buffer.getbuffer()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temp_name, path)
    except BaseException as error:
        Path(temp_name).unlink(missing_ok=True)
        if is_disk_full(error):
            raise OSError(errno.ENOSPC, disk_full_message(path, len(data))) from error
        raise


def load_training_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"resume: {path} does not exist; give a .lora_lab_state file written by a checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "global" not in str(error).lower():  # no object in it: a damaged or foreign file
            raise ResumeError(f"resume: {path} cannot be read as a LoRA Lab training state ({error})") from None
        # weights_only met something else than tensors and plain values
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        raise ResumeError(
            f"resume: {path} holds Python objects LoRA Lab does not load"
            f"{f' ({found.group(1)})' if found else ''}: a resume state has only tensors and plain values, and "
            "loading anything else could run code. It was not written by LoRA Lab, or was changed since: delete "
            "it and train again without resume."
        ) from None
    except Exception as error:  # torch raises several types for a damaged or foreign file
        raise ResumeError(f"resume: {path} cannot be read as a LoRA Lab training state ({error})") from error
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ResumeError(f"resume: {path} is not a LoRA Lab training state")
    return state


def restore_random_state(value: Any) -> Any:
    """random.Random states come back from torch.load with lists where tuples were."""
    return tuple(restore_random_state(v) for v in value) if isinstance(value, (list, tuple)) else value
