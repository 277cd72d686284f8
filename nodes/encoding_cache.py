"""Train LoRA's encoding cache on ComfyUI's side: where it lives, its cap, and what identifies a VAE and a CLIP
(and a CLIP vision model, whose features of the dataset's images the strength sweep keeps there).

The cache itself (``trainer_core.training.encoding_cache``) keeps latents and caption embeddings between
runs. It lives in ComfyUI's user folder, in the system-user folder the HTTP API never serves
(``user/__lora_lab/encoding_cache``); deleting that folder clears it. Its cap is ``LORA_LAB_CACHE_MAX_GB``
(default 10 GB); the entries used longest ago go first.

A VAE is identified by its weights (``bridge.weights_fingerprint``), class, dtype and device, with the
latent scaling of the MODEL's latent format that the codec applies; a CLIP by its weights, class,
tokenizer, last layer (CLIPSetLastLayer), device and, when a LoRA is patched into it, that patch set.
Both include the torch, Pillow and ComfyUI versions, whose code decides the numbers too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import folder_paths
import PIL
import torch

from ..trainer_core.training.encoding_cache import DEFAULT_MAX_GB, EncodingCache, EncodingCounts
from . import bridge

MAX_GB_VARIABLE = "LORA_LAB_CACHE_MAX_GB"
ENCODING_CACHE_HELP = (
    "Keep the latents and caption embeddings on disk (ComfyUI's user/__lora_lab/encoding_cache folder), so a "
    f"run on unchanged images, captions, VAE and CLIP skips encoding. Capped at {MAX_GB_VARIABLE} (default "
    f"{DEFAULT_MAX_GB:g} GB); delete the folder to clear it. Off = encode everything, keep nothing."
)


def cache_folder() -> Path:
    """``<ComfyUI user folder>/__lora_lab/encoding_cache``: a system-user folder, not served over HTTP."""
    system_folder = getattr(folder_paths, "get_system_user_directory", None)  # ComfyUI 0.3.68 and newer
    base = system_folder("lora_lab") if system_folder else os.path.join(folder_paths.get_user_directory(), "__lora_lab")
    return Path(base) / "encoding_cache"


def max_bytes() -> int:
    """The cap from ``LORA_LAB_CACHE_MAX_GB`` (decimal gigabytes), default 10."""
    text = os.environ.get(MAX_GB_VARIABLE, "").strip()
    if not text:
        return int(DEFAULT_MAX_GB * 1e9)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(
            f"the environment variable {MAX_GB_VARIABLE} is {text!r}: set it to a number of gigabytes (e.g. 20) "
            "for the encoding cache's cap, or remove it for the default of 10"
        )
    return int(value * 1e9)


def encoding_cache(enabled: bool, vae: Any, clip: Any, patcher: Any) -> EncodingCache | None:
    """The cache Train LoRA passes to the loop (None when off)."""
    if not enabled:
        return None
    return EncodingCache(cache_folder(), vae_identity(vae, patcher), clip_identity(clip), max_bytes())


def summary(counts: EncodingCounts | None) -> str:
    """The console line, e.g. "[LoRA Lab] encoding: latents 12 cached, 0 encoded; captions 12 cached, 0 encoded"."""
    return f"[LoRA Lab] encoding: {counts.summary() if counts else 'nothing encoded'}"


def vae_identity(vae: Any, patcher: Any) -> str:
    """Changes whenever the latents of the same pixels would: the VAE and the MODEL's latent scaling."""
    latent_format = patcher.get_model_object("latent_format")
    scaling = {name: _plain(getattr(latent_format, name, None))
               for name in ("scale_factor", "shift_factor", "latents_mean", "latents_std")}
    return _identity(
        "vae", type(vae.first_stage_model).__name__, str(vae.vae_dtype), torch.device(vae.device).type,
        vae.latent_channels, getattr(vae, "latent_dim", 2), type(latent_format).__name__, scaling,
        _patch_set(vae.patcher), bridge.weights_fingerprint(vae.first_stage_model.state_dict()),
    )


def clip_identity(clip: Any) -> str:
    """Changes whenever a caption's embedding would (clip skip set on Train LoRA is added by the loop)."""
    return _identity(
        "clip", type(clip.cond_stage_model).__name__, type(clip.tokenizer).__name__, clip.layer_idx,
        torch.device(clip.patcher.load_device).type, _patch_set(clip.patcher),
        bridge.weights_fingerprint(clip.cond_stage_model.state_dict()),
    )


def clip_vision_identity(clip_vision: Any) -> str:
    """Changes whenever an image's CLIP vision features would: the model's weights, class, preprocessing,
    dtype and device (for the strength sweep's scores)."""
    return _identity(
        "clip_vision", type(clip_vision.model).__name__, clip_vision.image_size, clip_vision.image_mean,
        clip_vision.image_std, str(clip_vision.dtype), torch.device(clip_vision.load_device).type,
        _patch_set(clip_vision.patcher), bridge.weights_fingerprint(clip_vision.model.state_dict()),
    )


def _identity(*parts: Any) -> str:
    try:
        from comfyui_version import __version__ as comfyui  # ComfyUI's root module, beside main.py
    except ImportError:
        comfyui = "?"
    return json.dumps([*parts, [torch.__version__, PIL.__version__, comfyui]], default=str)


def _patch_set(model_patcher: Any) -> str:
    """'' without patches; else the id ComfyUI gives this set of patches (a new one whenever they change)."""
    return str(model_patcher.patches_uuid) if getattr(model_patcher, "patches", None) else ""


def _plain(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.detach().float().cpu().reshape(-1).tolist()
    return value if value is None or isinstance(value, (int, float, str)) else repr(value)
