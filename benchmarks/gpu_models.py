"""The networks ``benchmarks/gpu.py`` trains: SD1.5's and SDXL's UNets at their real sizes (or tiny, for the
CPU smoke run), as ComfyUI builds them and as diffusers builds them, with seeded random weights.

Nothing is downloaded: ComfyUI's configs are the ones its model detection knows (``tools/full_size_models``),
diffusers' are written out here (the ``unet/config.json`` of runwayml SD1.5 and SDXL base, as numbers).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "helpers"))

COMFY_CLASS = {"sd15": "SD15", "sdxl": "SDXL"}
# What each model's text encoders give the UNet: (tokens, width) of the cross-attention context, pooled width.
CONTEXT = {"sd15": ((77, 768), None), "sdxl": ((77, 2048), 1280)}

DIFFUSERS_FULL: dict[str, dict[str, Any]] = {
    "sd15": dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
        attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ),
    "sdxl": dict(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=2048,
        attention_head_dim=(5, 10, 20), block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    ),
}
# The same shape as the tests' tiny ComfyUI configs (two levels, 32 and 64 channels, attention on the second).
DIFFUSERS_TINY: dict[str, dict[str, Any]] = {
    "sd15": dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, cross_attention_dim=768,
        attention_head_dim=4, block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), mid_block_type=None,
    ),
    "sdxl": dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, cross_attention_dim=2048,
        attention_head_dim=(2, 4), block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=1280 + 6 * 8,
        mid_block_type=None,
    ),
}
# peft's names for the layers LoRA Lab's default target ("attention") adapts in ComfyUI's UNet: each spatial
# transformer's proj_in / proj_out, and the attention projections and feed-forward of its blocks (equal
# adapter parameter counts at full size and tiny: checked on the meta device).
DIFFUSERS_ATTENTION_TARGETS = ["proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]


def comfy_unet_config(kind: str, tiny: bool) -> dict[str, Any]:
    if tiny:
        from family_models import SD15_TINY
        from tiny_families import FAMILIES

        return dict(SD15_TINY[1]) if kind == "sd15" else dict(FAMILIES["sdxl"].config)
    from tools.full_size_models import UNET_CONFIGS

    return dict(UNET_CONFIGS[kind])


@torch.no_grad()
def seeded_(module: torch.nn.Module, seed: int = 0) -> None:
    """Small seeded weights, on the module's own device (ComfyUI's ops leave them unset: a loader fills them)."""
    generator = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    for name, param in module.named_parameters():
        if param.ndim >= 2:
            fan_in = param[0].numel()
            param.copy_(torch.randn(param.shape, generator=generator, device=param.device) * (0.5 / fan_in**0.5))
        elif "bias" in name:
            param.zero_()
        else:
            param.fill_(1.0)


def comfy_patcher(kind: str, tiny: bool, dtype: torch.dtype):
    """A ModelPatcher over ComfyUI's own SD15/SDXL model class, weights in ``dtype`` on the training device."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    model_class = getattr(comfy.supported_models, COMFY_CLASS[kind])
    config = dict(model_class.unet_config)
    config.update(comfy_unet_config(kind, tiny))
    model_config = model_class(config)
    model_config.set_inference_dtype(dtype, None)
    device = comfy.model_management.get_torch_device()
    with torch.inference_mode():  # as a checkpoint loader makes them
        model = model_config.get_model({}, device=device)
        model.diffusion_model.to(device=device, dtype=dtype)
        seeded_(model.diffusion_model)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))


def diffusers_unet(kind: str, tiny: bool, dtype: torch.dtype, device: torch.device):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**(DIFFUSERS_TINY if tiny else DIFFUSERS_FULL)[kind]).to(device=device, dtype=dtype)
    seeded_(unet)
    return unet


def comfy_conditioning(kind: str, batch: int, device: torch.device | str = "cpu") -> list:
    """CONDITIONING as CLIPTextEncode gives it for this model: seeded noise of its text encoders' shape."""
    (tokens, width), pooled = CONTEXT[kind]
    generator = torch.Generator().manual_seed(0)
    cond = torch.randn((batch, tokens, width), generator=generator)
    extras = {"pooled_output": None if pooled is None else torch.randn((batch, pooled), generator=generator)}
    return [[cond, extras]]


class FixedText:
    """A TextEncoder for LoRA Lab's loop that gives every caption the same seeded conditioning."""

    def __init__(self, kind: str):
        self.kind = kind

    def encode(self, captions):
        cond, extras = comfy_conditioning(self.kind, 1)[0]
        embedding = {"cross_attn": cond}
        if extras["pooled_output"] is not None:
            embedding["pooled_output"] = extras["pooled_output"]
        return [dict(embedding) for _ in captions]


class PooledLatents:
    """A LatentCodec standing in for the VAE (encoding is outside what is timed): 8x average pooling."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.movedim(-1, 1) * 2 - 1
        pooled = torch.nn.functional.avg_pool2d(pixels, 8)
        return torch.cat([pooled, pooled.mean(dim=1, keepdim=True)], dim=1)
