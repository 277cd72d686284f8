"""Sampling and decoding with ComfyUI's own functions, as its nodes do: prompts encoded as
``CLIPTextEncode`` does, the empty latent the family's own empty-latent node makes, ``common_ksampler``,
``VAEDecode``. Train LoRA's sample images and every sweep and stack cell are drawn through here, so what
they show is what a KSampler + LoraLoader graph gives.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import comfy.model_management
import torch

from .bridge import UnsupportedModelError, model_family
from .latent_codec import is_video_model, latent_frames


def encode_prompt(clip: Any, text: str) -> list:
    """CONDITIONING exactly as ``CLIPTextEncode`` makes it."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def empty_latent(patcher: Any, width: int, height: int, batch: int = 1, vae: Any = None, frames: int = 1) -> torch.Tensor:
    """The zeros the model family's own empty-latent node gives (``EmptyLatentImage``, ``EmptySD3LatentImage``,
    ``EmptyFlux2LatentImage``, ``EmptyHunyuanLatentVideo`` with length ``frames``, ...) for one image of
    ``width`` x ``height`` (a clip of ``frames`` frames on a video model): the channels and axes of the
    MODEL's latent format, [B, C, T, h, w] with T = 1 + (frames-1)/4 for video models (one frame for other
    3-D latents), and ``latent_downscale``."""
    latent_format = patcher.get_model_object("latent_format")
    channels = latent_format.latent_channels
    dimensions = latent_format.latent_dimensions
    if dimensions not in (2, 3):
        raise UnsupportedModelError(
            f"LoRA Lab renders images, and the MODEL ({model_family(patcher)}) has a latent with {dimensions} "
            "axes, not an image or video latent: connect an image model's MODEL"
        )
    downscale = latent_downscale(patcher, vae)
    time_axis = [] if dimensions == 2 else [latent_frames(frames) if is_video_model(patcher.model) else 1]
    shape = [batch, channels, *time_axis, height // downscale, width // downscale]
    return torch.zeros(shape, device=comfy.model_management.intermediate_device())


# Latent formats (by class) that scale images down by more than 8 but do not say so in ComfyUI 0.3.75
# (newer ComfyUI formats carry ``spacial_downscale_ratio``): what their VAEs and empty-latent nodes use.
KNOWN_DOWNSCALE = {"Flux2": 16, "Wan22": 16, "HunyuanImage21": 32}


def latent_downscale(patcher: Any, vae: Any = None) -> int:
    """How many pixels one latent cell of the MODEL spans along each side (8; 16 for Flux.2 and Wan 2.2 5B,
    32 for HunyuanImage 2.1): the latent format's ``spacial_downscale_ratio`` where it says, else the one
    known for its format, else the VAE's when its latent channels are the model's, else 8 with a warning."""
    latent_format = patcher.get_model_object("latent_format")
    channels = latent_format.latent_channels
    ratio = getattr(latent_format, "spacial_downscale_ratio", None) or KNOWN_DOWNSCALE.get(type(latent_format).__name__)
    if ratio:
        return int(ratio)
    if vae is not None and getattr(vae, "latent_channels", None) == channels:
        return int(vae.spacial_compression_encode())
    logging.getLogger(__name__).warning(
        "[LoRA Lab] %s's latent format does not say how far it scales images down and no VAE with its %d channels "
        "is connected: assuming 8x, as EmptyLatentImage does", model_family(patcher), channels)
    return 8


# PixArt's position embedding (comfy/ldm/pixart/pixartms.py, ``forward_orig``) is made for whole 2x2 patches
# and divides by round(mean latent side / 64) * 64: ComfyUI's sampler fails on PixArt (a size mismatch, or
# ZeroDivisionError) unless both latent sides are even and their mean is over 32 cells (Python rounds 0.5 to 0),
# i.e. images in steps of 16 px with width + height of 528 px or more.
PATCHED_STEPS = {"PixArt": (2, 528)}  # model class -> (latent cells per step, least width + height in px)


def size_rule(patcher: Any, vae: Any = None) -> tuple[int, int]:
    """(the step in px the MODEL makes images in, the least width + height in px it can draw; 0 = any)."""
    cells, minimum = PATCHED_STEPS.get(model_family(patcher), (1, 0))
    return latent_downscale(patcher, vae) * cells, minimum


def fitted_size(patcher: Any, vae: Any, width: int, height: int, where: str) -> tuple[int, int, str | None]:
    """The image size nearest ``width`` x ``height`` that the MODEL can make (``size_rule``: its latent is
    1/``latent_downscale`` of the image, so Flux.2 draws in steps of 16 px, HunyuanImage 2.1 in steps of 32;
    PixArt in steps of 16 with width + height of 528 px or more, so smaller sizes grow, keeping their shape), and
    a note, also printed to the console, when that is not the size asked (None when it is). ``where`` names the
    node and inputs."""
    step, minimum = size_rule(patcher, vae)
    fitted_width, fitted_height = (max(step, (size + step // 2) // step * step) for size in (width, height))
    if fitted_width + fitted_height < minimum:
        grow = minimum / (fitted_width + fitted_height)
        fitted_width, fitted_height = (math.ceil(size * grow / step) * step for size in (fitted_width, fitted_height))
    if (fitted_width, fitted_height) == (width, height):
        return width, height, None
    limit = f" with width + height of {minimum} px or more" if minimum else ""
    note = (
        f"{where}: this MODEL ({model_family(patcher)}) makes images in steps of {step} px{limit}, so {width}x{height} "
        f"is drawn at {fitted_width}x{fitted_height}, the nearest size it can make"
    )
    print(f"[LoRA Lab] {note}", flush=True)
    return fitted_width, fitted_height, note


def ksample(model: Any, positive: list, negative: list, seed: int, steps: int, cfg: float, sampler_name: str,
            scheduler: str, width: int, height: int, vae: Any = None, frames: int = 1) -> torch.Tensor:
    """What the family's empty-latent node + ``KSampler`` give (one image; one clip of ``frames`` frames on a
    video model), through ComfyUI's own ``common_ksampler``."""
    import importlib

    comfy_nodes = importlib.import_module("nodes")  # ComfyUI's nodes.py, the module KSampler lives in
    latent = {"samples": empty_latent(model, width, height, 1, vae, frames)}
    (out,) = comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent)
    return out["samples"]


def batch_conditioning(conditionings: list[list]) -> list | None:
    """Several prompts' CONDITIONING as one batch (for sampling them together), or None when they cannot
    be batched (different extra entries, or extra tensors of different shapes: attention masks and Llama
    features follow each caption's token count, and ComfyUI runs those separately too). Token sequences of
    different length are repeated to a common length, as ComfyUI's own batching does."""
    if any(len(c) != 1 for c in conditionings):
        return None
    conds = [c[0][0] for c in conditionings]
    extras = [c[0][1] for c in conditionings]
    if len({tuple(sorted(e)) for e in extras}) != 1:
        return None
    length = math.lcm(*(c.shape[1] for c in conds))
    batched_extras: dict[str, Any] = {}
    for key in extras[0]:
        values = [e[key] for e in extras]
        if torch.is_tensor(values[0]) and all(torch.is_tensor(v) and v.shape[0] == 1 for v in values):
            if any(v.shape != values[0].shape for v in values):
                return None
            batched_extras[key] = torch.cat(values)
        elif all(v == values[0] for v in values):
            batched_extras[key] = values[0]
        else:
            return None
    return [[torch.cat([c.repeat(1, length // c.shape[1], 1) for c in conds]), batched_extras]]


def ksample_batch(model: Any, positive: list, negative: list, count: int, seed: int, steps: int, cfg: float,
                  sampler_name: str, scheduler: str, width: int, height: int, vae: Any = None) -> torch.Tensor:
    """``count`` images in one sampler call, each with the noise a single-image KSampler run at ``seed``
    would draw (``batch_index`` 0 for all)."""
    import importlib

    comfy_nodes = importlib.import_module("nodes")
    latent = {
        "samples": empty_latent(model, width, height, count, vae),
        "batch_index": [0] * count,
    }
    (out,) = comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent)
    return out["samples"]


def decode(vae: Any, samples: torch.Tensor) -> torch.Tensor:
    """``VAEDecode``: [B,H,W,3] in 0..1 (video VAEs' extra frame axis folded into the batch)."""
    images = vae.decode(samples)
    if images.ndim == 5:
        images = images.reshape(-1, *images.shape[-3:])
    return images


def sampler_names() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SAMPLERS)


def scheduler_names() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SCHEDULERS)
