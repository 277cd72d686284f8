"""Image-to-video training: each item's first-frame conditioning, encoded once (and kept in the encoding cache).

An image-to-video model (Wan 2.1 / Wan 2.2 14B I2V) is given, besides the noisy clip, a start image: at
inference the front end's node (ComfyUI's ``WanImageToVideo``) encodes the start image padded to the clip's
length and a mask that keeps its frame, and, for Wan 2.1 I2V, the start image's CLIP-vision features. Training
gives each item its OWN first frame the same way, so the LoRA learns what the model is asked at inference.

The codec says whether its model needs this (``first_frame_conditioning``) and builds it:
``encode_first_frame(first [1, H, W, 3], length)`` returns named tensors with a batch axis of 1, which join the
item's text embedding (``with_first_frames``): the denoiser passes them to the model as conditioning, as
ComfyUI's sampler passes a conditioning's values. An image (one frame) is its own first frame, as
``WanImageToVideo`` with length 1 makes it.

A cache entry's key holds the first frame's own pixels (not the rest of the clip), the length, the codec's
identity and ``first_frame_identity`` (what else decides the tensors, e.g. the CLIP vision model): a new
first frame is a new entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.protocols import TextEmbedding
from .encoding import item_frames

FirstFrames = list[TextEmbedding]


def conditions_on_first_frame(codec: Any) -> bool:
    """Whether ``codec``'s model takes each clip's first frame as conditioning (an image-to-video model)."""
    return bool(getattr(codec, "first_frame_conditioning", False))


def first_frame_key(data: Any, item: Any, codec: Any, codec_identity: str) -> str:
    """The encoding-cache key of ``item``'s first-frame conditioning: its first frame's pixels, its length,
    ``codec_identity`` (the VAE and latent scaling) and the codec's ``first_frame_identity``."""
    from .encoding_cache import entry_key

    first = np.ascontiguousarray(np.asarray(data.load_image(item), dtype=np.float32)[..., :3])
    pixels = hashlib.sha256(f"{first.shape}".encode() + first.tobytes()).hexdigest()
    identity = str(getattr(codec, "first_frame_identity", ""))
    return entry_key("first frame", codec_identity, identity, pixels, f"length={item_frames(item)}")


def encode_first_frames(data: Any, codec: Any, cache: Any = None, counts: Any = None,
                        used: set[Path] | None = None) -> FirstFrames | None:
    """Each item's first-frame conditioning (None when the codec's model takes none): read from ``cache``
    (an ``EncodingCache``) when it holds the entry, else encoded and stored there."""
    if not conditions_on_first_frame(codec):
        return None
    from .encoding_cache import entry_path, read_entry, write_entry

    out: FirstFrames = []
    cached = 0
    with torch.no_grad():
        for item in data.items:
            path = None
            if cache is not None:
                path = entry_path(cache.folder, "first_frames", first_frame_key(data, item, codec, cache.latent_codec))
                entry = read_entry(path)
                if entry:
                    out.append(entry)
                    cached += 1
                    if used is not None:
                        used.add(path)
                    continue
            first = torch.from_numpy(np.asarray(data.load_image(item), dtype=np.float32)[None, ..., :3])
            tensors = {k: v.detach().float().cpu().clone() for k, v in codec.encode_first_frame(first, item_frames(item)).items()}
            out.append(tensors)
            if path is not None:
                written = write_entry(path, tensors)
                if counts is not None:
                    counts.writable = counts.writable and written
                if used is not None:
                    used.add(path)
    if counts is not None:
        counts.notes.append(f"first frames (image-to-video) {cached} cached, {len(out) - cached} encoded")
    return out


def with_first_frames(embeddings: Sequence[TextEmbedding], first_frames: FirstFrames | None,
                      items: Sequence[int]) -> list[TextEmbedding]:
    """The text embeddings of the dataset items ``items``, each joined by that item's first-frame
    conditioning (unchanged without any)."""
    if not first_frames:
        return list(embeddings)
    return [{**embedding, **first_frames[item]} for embedding, item in zip(embeddings, items, strict=True)]
