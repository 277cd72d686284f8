"""LoRA weights in kohya's file format, and writing them safely.

Keys are ``<prefix><module path with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` with
``ss_*`` metadata, the format A1111, Forge, ComfyUI and diffusers all read.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save, save_file

# Module path (relative to the trained network, dots) -> key stem, e.g. "lora_unet_down_blocks_0_...". A namer
# with the attribute ``tensor_names = "peft"`` gets its LoRA tensors under peft's names (``peft_tensor_names``);
# one with ``row_splits`` (module path -> ((stem, rows), ...)) saves those LoRA layers as several (``split_rows``).
KeyNamer = Callable[[str], str]


def default_key_name(module_path: str) -> str:
    return "lora_unet_" + module_path.replace(".", "_")


def default_text_key_name(module_path: str) -> str:
    """kohya's single-text-encoder name for a path in a transformers ``CLIPTextModel``:
    ``encoder.layers.0.mlp.fc1`` (``text_model.encoder...`` before transformers 5) becomes
    ``lora_te_text_model_encoder_layers_0_mlp_fc1``."""
    path = module_path[len("text_model.") :] if module_path.startswith("text_model.") else module_path
    return "lora_te_text_model_" + path.replace(".", "_")


def peft_tensor_names(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One layer's LoRA tensors under peft's names, as diffusers and the ``diffusion_model.`` trainers write
    them: ``lora_A.weight`` carries the alpha / rank scale and there is no ``.alpha`` (a missing alpha means
    scale 1 to ComfyUI and diffusers alike). LoHa, LoKr and DoRA tensors keep their LyCORIS names."""
    if set(tensors) != {"lora_down.weight", "lora_up.weight", "alpha"}:
        return dict(tensors)
    down = tensors["lora_down.weight"]
    scale = float(tensors["alpha"]) / down.shape[0]
    return {"lora_A.weight": down * scale, "lora_B.weight": tensors["lora_up.weight"]}


def split_rows(tensors: Mapping[str, torch.Tensor],
               parts: Sequence[tuple[str, Sequence[int]]]) -> list[tuple[str, dict[str, torch.Tensor]]] | None:
    """One LoRA layer's tensors as several layers, as diffusers names the q, k and v of a fused qkv layer: each
    part (stem, rows) gets the same down weights and alpha and the rows ``rows`` of the up weights, so its change
    is exactly those rows of the layer's (up[rows] @ down = (up @ down)[rows]). None for LoHa, LoKr and DoRA
    tensors, which do not split by rows alone."""
    if set(tensors) != {"lora_down.weight", "lora_up.weight", "alpha"}:
        return None
    up = tensors["lora_up.weight"]
    return [(stem, {"lora_down.weight": tensors["lora_down.weight"],
                    "lora_up.weight": up[torch.as_tensor(list(rows))].contiguous(), "alpha": tensors["alpha"]})
            for stem, rows in parts]


class LoRAWeights(dict):
    """A kohya-keyed LoRA state dict that also carries its file metadata.

    It is a plain ``dict`` of tensors, so ComfyUI's ``LoraModelLoader`` and
    ``comfy.sd.load_lora_for_models`` take it as they are.
    """

    metadata: dict[str, str]
    file: Path | None = None  # the file Save LoRA wrote these weights to (None: not saved, or loaded from disk)
    written: Mapping[str, torch.Tensor] | None = None  # the file's tensors, when Save LoRA renamed them (key_names)

    def __init__(self, tensors: Mapping[str, torch.Tensor] | None = None, metadata: Mapping[str, str] | None = None):
        super().__init__(tensors or {})
        self.metadata = dict(metadata or {})

    @property
    def trigger_word(self) -> str:
        return self.metadata.get("ss_trigger_word", "")

    @property
    def steps(self) -> int:
        return int(self.metadata.get("ss_steps", "0") or 0)

    def content_hash(self) -> str:
        """sha256 of the tensor data as written to disk (kohya's ``sshs_model_hash``)."""
        return tensor_data_hash(self)


def tensor_data_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    blob = save({k: v.contiguous() for k, v in tensors.items()})
    header = int.from_bytes(blob[:8], "little")
    return hashlib.sha256(blob[8 + header :]).hexdigest()


_UNSAFE = re.compile(r'[<>:"/\\|?*\x00-\x1f]')
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def sanitize_filename(name: str) -> str:
    """A file name that is safe on Windows, macOS and Linux, and cannot leave its folder.

    Sub-folders are kept when written with '/' (``people/alice``), each part sanitised; '..' and
    absolute paths are refused. Invisible format characters (right-to-left overrides, zero-width spaces) are
    removed, since they make a name look other than it is, and lone surrogates (no file system stores them)
    become '_'.
    """
    cleaned = "".join("_" if unicodedata.category(char) == "Cs" else char for char in name
                      if unicodedata.category(char) != "Cf")
    cleaned = cleaned.strip().replace("\\", "/")
    if cleaned.lower().endswith(".safetensors"):
        cleaned = cleaned[: -len(".safetensors")]
    if cleaned.startswith("/") or re.match(r"^[A-Za-z]:", cleaned):
        raise ValueError(f"file name {name!r} is an absolute path: give a name inside models/loras, e.g. 'my_lora'")
    parts = []
    for part in cleaned.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise ValueError(f"file name {name!r} climbs out of models/loras with '..': remove the '..'")
        part = _UNSAFE.sub("_", part).replace(" ", "_").rstrip(". ")
        if part.split(".")[0].upper() in _RESERVED:
            part = "_" + part
        if part:
            parts.append(part[:120])
    if not parts:
        raise ValueError(f"file name {name!r} is empty after removing unsafe characters: type a name such as 'my_lora'")
    return "/".join(parts)


def unique_path(folder: Path, stem: str, suffix: str = ".safetensors") -> Path:
    """``folder/stem.suffix``, or with ``_0001``, ``_0002`` … appended if that exists."""
    candidate = folder / f"{stem}{suffix}"
    counter = 1
    while candidate.exists():
        candidate = folder / f"{stem}_{counter:04d}{suffix}"
        counter += 1
    return candidate


def write_safetensors_atomic(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str]) -> None:
    """Write through a temporary file in the same folder, then rename: never a half-written file.

    A full disk or a folder that cannot be written raises ``OSError`` with a message naming the folder
    (and, for a full disk, the space the file needs and the space there is)."""
    on_cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except PermissionError as error:
        raise PermissionError(error.errno, unwritable_folder_message(path.parent)) from error
    os.close(handle)
    try:
        save_file(on_cpu, temp_name, metadata=dict(metadata))
        os.replace(temp_name, path)
    except BaseException as error:
        Path(temp_name).unlink(missing_ok=True)
        if is_disk_full(error):
            needed = len(save(on_cpu, metadata=dict(metadata)))
            raise OSError(errno.ENOSPC, disk_full_message(path, needed)) from error
        raise


def is_disk_full(error: BaseException) -> bool:
    return getattr(error, "errno", None) == errno.ENOSPC or "os error 28" in str(error)


def disk_full_message(path: Path, needed: int) -> str:
    free = shutil.disk_usage(path.parent).free
    return (f"The disk holding {path.parent} is full: {path.name} needs {_size(needed)} and {_size(free)} is free. "
            "Free some space there (or point ComfyUI's models folder elsewhere) and run again; nothing was written.")


def unwritable_folder_message(folder: Path) -> str:
    return (f"LoRA Lab cannot write to {folder} (read-only or not yours): make it writable for the user ComfyUI "
            "runs as, or give ComfyUI another models folder (extra_model_paths.yaml).")


def check_writable(folder: Path) -> None:
    """Make ``folder`` (and its parents) if needed and prove a file can be created in it; else a
    ``PermissionError`` naming it. For checks before a long run, not only when its file is due."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".lora_lab_write_test."):
            pass
    except OSError as error:
        raise PermissionError(error.errno, unwritable_folder_message(folder)) from error


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count / 2**10:.0f} KiB"


def save_lora(weights: LoRAWeights, path: Path, overwrite: bool = False) -> Path:
    """Save ``weights`` with their metadata (plus the tensor hash) at ``path``."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists already: choose another name or allow overwriting")
    metadata = dict(weights.metadata)
    metadata["sshs_model_hash"] = weights.content_hash()
    write_safetensors_atomic(weights, path, metadata)
    return path


def load_lora(path: Path) -> LoRAWeights:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return LoRAWeights(load_file(str(path)), metadata)


def rewrite_metadata(path: Path, expected: Mapping[str, torch.Tensor], extra: Mapping[str, str]) -> None:
    """Add ``extra`` to the metadata of the LoRA file at ``path``, rewritten atomically (the tensors as they
    are). ``ValueError`` when the file's tensors are no longer ``expected`` (it was replaced since it was
    saved): then nothing is written. On any error the file is left as it was."""
    from safetensors import SafetensorError

    try:
        on_disk = load_lora(path)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} cannot be read ({error})") from error
    if on_disk.keys() != expected.keys() or tensor_data_hash(on_disk) != tensor_data_hash(expected):
        raise ValueError(f"{path.name} holds other weights than this LoRA now (replaced since it was saved)")
    write_safetensors_atomic(on_disk, path, {**on_disk.metadata, **extra})


def metadata_json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
