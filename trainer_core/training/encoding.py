"""Encoding a dataset once: latents per image, text embeddings per distinct caption."""

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


def concat_text(embeddings: Sequence[TextEmbedding]) -> TextEmbedding:
    """Batch per-caption embeddings whose token sequences differ in length.

    Without an attention mask, sequences are repeated to a common length the way ComfyUI's
    ``CONDCrossAttn`` batches conditioning (repetition leaves cross-attention's result unchanged). With
    one (keys named ``attention_mask*``, one value per token), the masks are padded with zeros to the
    longest and every token sequence with zeros after its last token, the mask's zeros marking the
    padding out, as ComfyUI's encoders do when they pad to a fixed length. Repeating would feed the repeated tokens to models that
    attend over text and image jointly, where repetition does change the result."""
    masked = any(key.startswith("attention_mask") for key in embeddings[0])
    out: TextEmbedding = {}
    for key in embeddings[0]:
        tensors = [e[key] for e in embeddings]
        token_axis = _token_axis(key, tensors[0])
        lengths = {t.shape[token_axis] for t in tensors} if token_axis is not None else set()
        if token_axis is not None and len(lengths) > 1:
            if masked:
                longest = max(lengths)
                tensors = [_pad_tokens(t, token_axis, longest) for t in tensors]
            else:
                length = math.lcm(*lengths)
                tensors = [_repeat_tokens(t, token_axis, length) for t in tensors]
        out[key] = torch.cat(tensors, dim=0)
    return out


def _token_axis(key: str, tensor: torch.Tensor) -> int | None:
    """The token axis of ``tensor``: a mask's last; the one before the width of a token sequence (3-D,
    or 4-D for encoders that stack several layers' outputs, as HiDream's Llama)."""
    if key.startswith("attention_mask"):
        return tensor.ndim - 1
    if tensor.ndim in (3, 4):
        return tensor.ndim - 2
    return None


def _repeat_tokens(tensor: torch.Tensor, axis: int, length: int) -> torch.Tensor:
    repeats = [1] * tensor.ndim
    repeats[axis] = length // tensor.shape[axis]
    return tensor.repeat(*repeats)


def _pad_tokens(tensor: torch.Tensor, axis: int, length: int) -> torch.Tensor:
    pad = [0, 0] * (tensor.ndim - 1 - axis) + [0, length - tensor.shape[axis]]
    return torch.nn.functional.pad(tensor, pad)


def encode_latents(data: _Data, codec: LatentCodec, chunk: int = 8) -> list[torch.Tensor]:
    """Each image encoded once, at its bucket size, in small same-size chunks."""
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


