"""``benchmarks/gpu.py`` compares LoRA Lab with a bare diffusers + peft loop on the same architecture: the two
arms must train the same layers. Built on the meta device (no memory, no weights), at the real SD1.5 and
SDXL sizes the GPU script uses, the diffusers UNet has exactly ComfyUI's parameter count and its LoRA exactly
the adapter parameters LoRA Lab's default target gives ComfyUI's UNet.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "helpers"))
sys.path.insert(0, str(REPO / "benchmarks"))
from comfy_inproc import load_pack  # noqa: E402

pytestmark = pytest.mark.comfy


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_the_gpu_benchmarks_diffusers_arm_trains_what_lora_lab_trains(kind: str):
    load_pack()
    import comfy.supported_models
    import gpu_models
    from diffusers import UNet2DConditionModel
    from lora_lab.trainer_core.adapters.inject import find_target_modules
    from lora_lab.trainer_core.training.memory_estimate import adapter_parameter_count, layer_shapes
    from peft import LoraConfig, inject_adapter_in_model

    model_class = getattr(comfy.supported_models, gpu_models.COMFY_CLASS[kind])
    config = dict(model_class.unet_config)
    config.update(gpu_models.comfy_unet_config(kind, tiny=False))
    model_config = model_class(config)
    model_config.set_inference_dtype(torch.bfloat16, None)
    with torch.device("meta"):
        comfy_unet = model_config.get_model({}, device=torch.device("meta")).diffusion_model
        diffusers_unet = UNet2DConditionModel(**gpu_models.DIFFUSERS_FULL[kind])
    base = sum(p.numel() for p in diffusers_unet.parameters())
    assert base == sum(p.numel() for p in comfy_unet.parameters()) > 800e6

    rank = 16
    ours = adapter_parameter_count(layer_shapes(comfy_unet, find_target_modules(comfy_unet, "attention")), rank)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=gpu_models.DIFFUSERS_ATTENTION_TARGETS),
                            diffusers_unet)
    theirs = sum(p.numel() for name, p in diffusers_unet.named_parameters() if "lora_" in name)
    assert theirs == ours > 0
