"""Encoding a dataset once: latents per image or clip, text embeddings per distinct caption.

A codec that says ``video_vae`` (a VAE that reads a batch of pixels as the frames of one clip: Wan's,
HunyuanVideo's) encodes one item at a time, ``[F, H, W, 3]`` -> ``[1, C, T, h, w]``; with ``trains_clips``
(a video model) an item gives all its frames (``load_frames``), else its first sampled frame
(``load_image``), which is also what an image model's VAE gets from a clip."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from ..models.protocols import LatentCodec, TextEmbedding, TextEncoder


class _Data(Protocol):
    @property
    def items(self) -> Sequence[Any]: ...

    def load_image(self, item: Any) -> np.ndarray: ...


def item_frames(item: Any) -> int:
    """How many frames ``item`` trains: 1 for an image, the clip window's frame count for a clip."""
    return max(1, int(getattr(item, "frames", 1) or 1))


def load_frames(data: Any, item: Any) -> np.ndarray:
    """``item``'s frames [F, H, W, 3] (the dataset's ``load_frames``; an image is one frame)."""
    loader = getattr(data, "load_frames", None)
    if loader is not None:
        return np.asarray(loader(item))
    return np.asarray(data.load_image(item))[None]


def text_groups(embeddings: Sequence[TextEmbedding]) -> list[list[int]]:
    """Indices of the captions that batch into one forward pass, as ComfyUI's sampler batches conds.

    Token sequences without an attention mask batch at any length (``CONDCrossAttn`` repeats them to a
    common length). An attention mask (keys ``attention_mask*``) is a ``CONDRegular``, which ComfyUI
    concatenates only at equal shapes: captions whose masks differ in length run in separate passes,
    as two prompts of different lengths do in ComfyUI. (Padding instead does not work: Lumina 2 and
    Z-Image pass a padded mask of a batch of 2 straight to attention, which cannot broadcast it.)"""
    groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
    for index, embedding in enumerate(embeddings):
        shapes = tuple(tuple(v.shape) for k, v in sorted(embedding.items()) if k.startswith("attention_mask"))
        groups.setdefault(shapes, []).append(index)
    return list(groups.values())


def concat_text(embeddings: Sequence[TextEmbedding]) -> TextEmbedding:
    """Batch per-caption embeddings of one ``text_groups`` group; token sequences of different lengths
    are repeated to a common length the way ComfyUI batches conditioning (repetition leaves attention's
    result unchanged), including stacked layers ([1, layers, tokens, width], HiDream's Llama)."""
    if len(text_groups(embeddings)) > 1:
        raise ValueError("captions whose attention masks differ in length do not batch: split them with text_groups")
    out: TextEmbedding = {}
    for key in embeddings[0]:
        tensors = [e[key] for e in embeddings]
        if tensors[0].ndim in (3, 4):
            axis = tensors[0].ndim - 2
            lengths = {t.shape[axis] for t in tensors}
            if len(lengths) > 1:
                length = math.lcm(*lengths)
                tensors = [_repeat_tokens(t, axis, length) for t in tensors]
        out[key] = torch.cat(tensors, dim=0)
    return out


def _repeat_tokens(tensor: torch.Tensor, axis: int, length: int) -> torch.Tensor:
    repeats = [1] * tensor.ndim
    repeats[axis] = length // tensor.shape[axis]
    return tensor.repeat(*repeats)


def encode_latents(data: _Data, codec: LatentCodec, chunk: int = 8) -> list[torch.Tensor]:
    """Each image encoded once, at its bucket size, in small same-size chunks; through a video VAE, each
    item on its own as a clip (see the module's docstring)."""
    if getattr(codec, "video_vae", False):
        return _encode_clips(data, codec, trains_clips=bool(getattr(codec, "trains_clips", False)))
    latents: list[torch.Tensor | None] = [None] * len(data.items)
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for index, item in enumerate(data.items):
        by_bucket.setdefault(tuple(item.bucket), []).append(index)
    with torch.no_grad():
        for indices in by_bucket.values():
            for start in range(0, len(indices), chunk):
                part = indices[start : start + chunk]
                pixels = torch.from_numpy(np.stack([data.load_image(data.items[i]) for i in part]))
                encoded = codec.encode(pixels).float().cpu()
                for i, latent in zip(part, encoded, strict=True):
                    latents[i] = latent.clone()
    return [latent for latent in latents if latent is not None]


def _encode_clips(data: _Data, codec: Any, trains_clips: bool) -> list[torch.Tensor]:
    latents = []
    with torch.no_grad():
        for item in data.items:
            pixels = load_frames(data, item) if trains_clips else np.asarray(data.load_image(item))[None]
            latents.append(codec.encode_clip(torch.from_numpy(pixels)).float().cpu()[0].clone())
    return latents


class TextCache:
    """Embeddings per distinct caption string; random caption processing re-encodes only new strings."""

    def __init__(self, encoder: TextEncoder, limit: int = 4096):
        self.encoder = encoder
        self.limit = limit
        self.cache: dict[str, TextEmbedding] = {}

    def get(self, captions: Sequence[str]) -> list[TextEmbedding]:
        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if missing:
            with torch.no_grad():
                encoded = self.encoder.encode(missing)
            if len(self.cache) + len(missing) > self.limit:
                self.cache.clear()
            for caption, embedding in zip(missing, encoded, strict=True):
                self.cache[caption] = {k: v.detach().clone() for k, v in embedding.items()}
        return [self.cache[c] for c in captions]


