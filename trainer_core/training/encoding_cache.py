"""Latents and caption embeddings kept on disk between runs: a run on an unchanged dataset skips encoding.

An entry is one safetensors file named by the sha256 of everything that decides its tensors. A latent's
key holds the image's pixels as the dataset loads them (the dataset's ``pixel_key``: file bytes, bucket,
crop, background) and the latent codec's identity; a caption embedding's key holds the caption, the clip
skip and the text encoder's identity. The identities (weights, dtype, device, latent scaling...) are the
front end's to compute (``EncodingCache.latent_codec`` / ``.text_encoder``): this module never sees a model.

Files are written under a temporary name and renamed, so two runs writing one entry leave one whole file.
An entry that cannot be read, or whose tensors no longer match the digest stored with them, is encoded
again and replaced. The folder is kept under ``max_bytes`` by deleting the entries used longest ago (each
use sets a file's access time). Deleting the folder clears the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..models.protocols import LatentCodec, TextEmbedding
from .encoding import TextCache, encode_latents, item_frames, load_frames

log = logging.getLogger(__name__)

DEFAULT_MAX_GB = 10.0
ENTRY_FORMAT = "lora_lab_encoding_v1"  # part of every key: a new layout never reads old files
_STALE_TEMP_SECONDS = 24 * 3600  # a temporary file this old was left by a process that died while writing
_UNREADABLE = (OSError, SafetensorError, ValueError, KeyError, RuntimeError, json.JSONDecodeError)


@dataclass(frozen=True)
class EncodingCache:
    """Where the cache lives, its size cap, and what identifies the models whose outputs it keeps."""

    folder: Path
    latent_codec: str  # changes whenever the latents of the same pixels would (VAE weights, dtype, scaling)
    text_encoder: str  # changes whenever a caption's embedding would (weights, last layer, dtype)
    max_bytes: int = int(DEFAULT_MAX_GB * 1e9)


@runtime_checkable
class KeyedData(Protocol):
    """A dataset that can name the pixels it loads for an item (``trainer_core.data.dataset.Dataset``)."""

    @property
    def items(self) -> Sequence[Any]: ...

    def load_image(self, item: Any) -> np.ndarray: ...

    def pixel_key(self, item: Any) -> str: ...


@dataclass
class EncodingCounts:
    """How a run got its latents and caption embeddings: read from the cache, or encoded."""

    cache_on: bool
    latents_cached: int = 0
    latents_encoded: int = 0
    texts_cached: int = 0
    texts_encoded: int = 0
    texts_every_step: bool = False  # the text encoder trains, or captions change per step: nothing to keep
    writable: bool = True  # False after the first write the disk refused: the run stops trying
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """E.g. "latents 12 cached, 0 encoded; captions 12 cached, 0 encoded"."""
        latents = f"latents {self.latents_cached} cached, {self.latents_encoded} encoded"
        if self.texts_every_step:
            texts = "captions encoded during training (the text encoder trains or captions vary per step)"
        else:
            texts = f"captions {self.texts_cached} cached, {self.texts_encoded} encoded"
        tail = "" if self.cache_on else " (encoding cache off)"
        unwritten = [] if self.writable else ["the cache could not be written (the warning above says why)"]
        return "; ".join([f"{latents}; {texts}{tail}", *self.notes, *unwritten])


def encode_dataset(
    data: Any, codec: LatentCodec, texts: TextCache, captions: Sequence[str] | None, cache: EncodingCache | None,
    clip_skip: int,
) -> tuple[list[torch.Tensor], EncodingCounts]:
    """The dataset's latents, and ``texts`` filled with the embeddings of ``captions`` (None: captions are
    encoded at every step, nothing to fill), through ``cache`` when there is one; then the cache is trimmed
    to its cap, keeping this run's entries."""
    counts = EncodingCounts(cache_on=cache is not None, texts_every_step=captions is None)
    used: set[Path] = set()
    if cache is not None and isinstance(data, KeyedData):
        latents = cached_latents(data, codec, cache, counts, used)
    else:
        latents = encode_latents(data, codec)
        counts.latents_encoded = len(latents)
        if cache is not None:
            counts.notes.append("this dataset cannot name its pixels, so its latents are not cached")
    if captions is not None and cache is not None:
        cached_texts(texts, captions, cache, clip_skip, counts, used)
    elif captions is not None:
        counts.texts_encoded = len(set(captions) - set(texts.cache))
        texts.get(captions)
    if cache is not None and used:
        trim(cache.folder, cache.max_bytes, keep=used)
    return latents, counts


def entry_key(*parts: str) -> str:
    """The sha256 naming an entry: the format and every part that decides its tensors."""
    return hashlib.sha256(json.dumps([ENTRY_FORMAT, *parts], ensure_ascii=False).encode()).hexdigest()


def entry_path(folder: Path, kind: str, key: str) -> Path:
    return folder / kind / key[:2] / f"{key}.safetensors"


def cached_latents(data: KeyedData, codec: LatentCodec, cache: EncodingCache, counts: EncodingCounts,
                   used: set[Path]) -> list[torch.Tensor]:
    """Each item's latent: read from the cache, else encoded (as ``encode_latents`` does) and stored."""
    paths = [entry_path(cache.folder, "latents", entry_key("latent", *latent_key_parts(cache, data, item, codec)))
             for item in data.items]
    latents: list[torch.Tensor | None] = []
    for path in paths:
        entry = read_entry(path)
        latents.append(None if entry is None else entry.get("latent"))
    missing = [index for index, latent in enumerate(latents) if latent is None]
    if missing:
        encoded = encode_latents(_Subset(data, missing), codec)
        for index, latent in zip(missing, encoded, strict=True):
            latents[index] = latent
            counts.writable = counts.writable and write_entry(paths[index], {"latent": latent})
    used.update(paths)
    counts.latents_cached += len(paths) - len(missing)
    counts.latents_encoded += len(missing)
    return [latent for latent in latents if latent is not None]


def latent_key_parts(cache: EncodingCache, data: KeyedData, item: Any, codec: LatentCodec) -> tuple[str, ...]:
    """What decides an item's latent: the codec, the item's pixels and, for a clip, its window (the exact
    source frame indices and frame count, in ``item.clip``; another window of the same file is another
    entry) and whether it is encoded whole or as its first frame (an image model). Images keep the key
    they always had."""
    clip = getattr(item, "clip", None)
    whole = "whole clip" if getattr(codec, "trains_clips", False) else "first frame"
    window = () if clip is None else (f"frames={item_frames(item)}", repr(clip), whole)
    return (cache.latent_codec, data.pixel_key(item), *window)


def cached_texts(texts: TextCache, captions: Sequence[str], cache: EncodingCache, clip_skip: int,
                 counts: EncodingCounts, used: set[Path]) -> None:
    """Fill ``texts`` with every caption's embedding: read from the cache, else encoded and stored."""
    distinct = list(dict.fromkeys(captions))
    paths = {c: entry_path(cache.folder, "text", entry_key("text", cache.text_encoder, str(clip_skip), c))
             for c in distinct}
    for caption, path in paths.items():
        entry = read_entry(path)
        if entry:
            texts.cache[caption] = entry
    missing = [caption for caption in distinct if caption not in texts.cache]
    for caption, embedding in zip(missing, texts.get(missing), strict=True):
        counts.writable = counts.writable and write_entry(paths[caption], embedding)
    used.update(paths.values())
    counts.texts_cached += len(distinct) - len(missing)
    counts.texts_encoded += len(missing)


def read_entry(path: Path) -> dict[str, torch.Tensor] | None:
    """The entry's tensors, or None when it is missing or cannot be trusted (then it is deleted)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
        if metadata.get("format") != ENTRY_FORMAT or metadata.get("digest") != _digest(tensors):
            raise ValueError("its tensors do not match the digest stored with them")
    except FileNotFoundError:
        return None
    except _UNREADABLE as error:
        log.warning("encoding cache: %s cannot be read (%s); encoding again", path, error)
        path.unlink(missing_ok=True)
        return None
    try:
        os.utime(path)  # its last use, for the size cap
    except OSError:
        pass
    return tensors


def write_entry(path: Path, tensors: TextEmbedding) -> bool:
    """Store ``tensors`` under ``path`` atomically; False (and a warning) when the disk refuses."""
    cpu = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
    temp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
        save_file(cpu, temp_name, metadata={"format": ENTRY_FORMAT, "digest": _digest(cpu)})
        os.replace(temp_name, path)
        return True
    except (OSError, SafetensorError) as error:  # a full disk, a folder that is not writable
        log.warning("encoding cache: cannot write %s (%s); training goes on without caching what is left. Free "
                    "space there, or turn encoding_cache off", path, error)
        return False
    finally:
        if temp_name is not None and os.path.exists(temp_name):
            os.unlink(temp_name)


def trim(folder: Path, max_bytes: int, keep: Collection[Path] = ()) -> int:
    """Delete the entries used longest ago until the folder holds at most ``max_bytes`` (entries in
    ``keep``, the current run's, stay); also temporary files left by processes that died. Returns the
    number of entries deleted."""
    entries: list[tuple[float, int, Path]] = []
    now = time.time()
    for path in folder.rglob("*"):
        try:
            stat = path.stat()
        except OSError:
            continue
        if path.name.endswith(".tmp") and now - stat.st_mtime > _STALE_TEMP_SECONDS:
            path.unlink(missing_ok=True)
        elif path.suffix == ".safetensors":
            entries.append((stat.st_atime, stat.st_size, path))
    total = sum(size for _, size, _ in entries)
    deleted = 0
    for _, size, path in sorted(entries):
        if total <= max_bytes:
            break
        if path in keep:
            continue
        path.unlink(missing_ok=True)
        total -= size
        deleted += 1
    return deleted


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _Subset:
    """Some items of a dataset, loaded by the dataset itself."""

    def __init__(self, data: KeyedData, indices: list[int]):
        self.data = data
        self.items = [data.items[index] for index in indices]

    def load_image(self, item: Any) -> np.ndarray:
        return self.data.load_image(item)

    def load_frames(self, item: Any) -> np.ndarray:
        return load_frames(self.data, item)
