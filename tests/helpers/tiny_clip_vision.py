"""ComfyUI's own ``ClipVisionModel`` built tiny in this process, random and seeded.

ComfyUI's CLIPVisionLoader picks its config from the file's key layout, and its smallest is ViT-L (300M
weights), too large to build here: this builds ``comfy.clip_vision.ClipVisionModel`` from a tiny config file
instead. ``hidden_size`` 1280 is clip_vision_h's width, which Wan 2.1 I2V's image embedding reads."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CLIP_VISION = {
    "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": 32, "image_size": 32,
    "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 64, "layer_norm_eps": 1e-05,
    "model_type": "clip_vision_model", "num_attention_heads": 2, "num_channels": 3, "num_hidden_layers": 2,
    "patch_size": 8, "projection_dim": 16, "torch_dtype": "float32",
}


def tiny_clip_vision(folder: Path, **overrides):
    """A ``ClipVisionModel`` from ``TINY_CLIP_VISION`` updated with ``overrides`` (its config file goes in
    ``folder``), weights small and seeded (ComfyUI's ops leave them to a loader)."""
    import comfy.clip_vision

    config = Path(folder) / "clip_vision" / "tiny_clip_vision.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(dict(TINY_CLIP_VISION, **overrides)))
    model = comfy.clip_vision.ClipVisionModel(str(config))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.model.named_parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
            else:
                param.copy_(torch.zeros(param.shape) if "bias" in name else torch.ones(param.shape))
    return model
