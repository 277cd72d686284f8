"""Train LoRA's memory estimate over the family matrix: every family's tiny model (ComfyUI's own model class)
gets a finite, positive estimate whose exact parts are the network's own and whose activation part is
per family (reported for SD1.5/SDXL/Flux.1, scaled by layer widths for the rest), never a silent guess;
the scaling is calibrated on ComfyUI's Flux.1 at its real size (built on the meta device, no weights)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from comfy_inproc import load_pack  # noqa: E402
from family_models import family_patcher  # noqa: E402
from tiny_families import FAMILIES  # noqa: E402

pytestmark = pytest.mark.comfy

REPORTED = {"BaseModel", "SDXL", "Flux"}
MIB = 2**20
FLUX_REAL = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                 hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56],
                 theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)
# Lumina 2 and Z-Image share ComfyUI's class (Lumina2): the sizes ComfyUI's detection reads from each checkpoint.
LUMINA2_REAL = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=2304, cap_feat_dim=2304, n_layers=26,
                    n_heads=24, n_kv_heads=8, axes_dims=[32, 32, 32], axes_lens=[300, 512, 512], rope_theta=10000.0,
                    qk_norm=True, ffn_dim_multiplier=4.0)
Z_IMAGE_REAL = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=3840, cap_feat_dim=2560, n_layers=30,
                    n_heads=30, n_kv_heads=30, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512], rope_theta=256.0,
                    qk_norm=True, ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True, time_scale=1000.0,
                    pad_tokens_multiple=32)


@pytest.fixture(scope="module")
def pack():
    return load_pack()


def estimate(bridge, patcher, resolution=1024, **training):
    from lora_lab.nodes.train_progress import memory_estimate_for
    from lora_lab.trainer_core.adapters.config import LoRAConfig
    from lora_lab.trainer_core.training.config import TrainingConfig

    return memory_estimate_for(bridge.ComfyDenoiser(patcher), None, LoRAConfig(rank=16, alpha=16),
                               TrainingConfig(mixed_precision="bf16", **training), "AdamW", resolution,
                               torch.device("cuda"))


# Cosmos Predict2 is refused (its prediction type) before Train LoRA estimates anything.
@pytest.mark.parametrize("family", ["sd15", *(name for name in FAMILIES if name != "cosmos_predict2")])
def test_every_matrix_family_gets_a_finite_positive_estimate_with_its_own_parts(pack, family):
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.adapters.inject import find_target_modules
    from lora_lab.trainer_core.training.memory_estimate import layer_shapes, tensor_bytes

    patcher = family_patcher(family)
    network = patcher.model.diffusion_model
    result = estimate(bridge, patcher)
    parts = (result.base_weights, result.adapter, result.optimizer_state, result.activations, result.overhead)
    assert all(math.isfinite(part) and part > 0 for part in parts), parts
    assert result.base_weights == tensor_bytes(network)
    lora_parameters = sum(16 * (i + o) for i, o in layer_shapes(network, find_target_modules(network, "attention")))
    assert result.adapter == 8 * lora_parameters and result.optimizer_state == 8 * lora_parameters  # AdamW, fp32
    expected_basis = "reported" if bridge.model_family(patcher) in REPORTED else "scaled"
    assert result.activation_basis == expected_basis
    # Activations follow the pixels and the settings, whatever the family.
    assert estimate(bridge, patcher, resolution=512).activations == pytest.approx(result.activations / 4, rel=1e-3)
    assert estimate(bridge, patcher, batch_size=2).activations == pytest.approx(2 * result.activations, rel=1e-3)
    assert estimate(bridge, patcher, gradient_checkpointing=True).activations < result.activations / 2
    text = result.describe()
    assert "a guess" not in text and ("scaled from Flux.1's" in text) == (expected_basis == "scaled")
    print(f"{family} ({bridge.model_family(patcher)}, tiny): {text}")


def real_size(model_class: str, config: dict):
    """ComfyUI's model class at a real checkpoint's size, on the meta device (no memory is used)."""
    import comfy.model_patcher
    import comfy.supported_models

    config_class = getattr(comfy.supported_models, model_class)
    model_config = config_class({**config_class.unet_config, **config})
    model_config.set_inference_dtype(torch.bfloat16, None)
    model = model_config.get_model({}, device="meta")
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("meta"), offload_device=torch.device("meta"))


def test_the_scaled_figures_are_calibrated_on_flux_and_follow_the_real_networks_size(pack):
    from lora_lab.trainer_core.training.memory_estimate import (
        ACTIVATION_GIB_PER_MEGAPIXEL,
        FLUX_LINEAR_INPUTS,
        activation_gib_per_megapixel,
        linear_inputs,
    )

    flux = real_size("Flux", FLUX_REAL).model.diffusion_model
    assert linear_inputs(flux) == FLUX_LINEAR_INPUTS
    # A family without a reported figure but Flux.1's network (Chroma's is Flux.1 schnell's) gets Flux.1's figure.
    assert activation_gib_per_megapixel("Chroma", linear_inputs(flux)) == (ACTIVATION_GIB_PER_MEGAPIXEL["Flux"], "scaled")
    lumina2, _ = activation_gib_per_megapixel("Lumina2", linear_inputs(real_size("Lumina2", LUMINA2_REAL).model.diffusion_model))
    z_image, _ = activation_gib_per_megapixel("Lumina2", linear_inputs(real_size("ZImage", Z_IMAGE_REAL).model.diffusion_model))
    print(f"activations at real size, GiB per megapixel: Lumina 2 {lumina2:.1f}, Z-Image {z_image:.1f}, Flux.1 18.0")
    assert 3 < lumina2 < z_image < ACTIVATION_GIB_PER_MEGAPIXEL["Flux"]  # 2.6 B < 6 B < 12 B parameters


def test_a_network_without_linear_layers_gets_a_guess_that_says_so():
    from trainer_core.training.memory_estimate import estimate_training_memory

    result = estimate_training_memory(base_weight_bytes=MIB, adapter_parameters=1000, optimizer="AdamW",
                                      family="SomeNewModel", batch_size=1, width=1024, height=1024, precision="bf16",
                                      gradient_checkpointing=False)
    assert result.activation_basis == "guess" and "a guess: no figure for this model family" in result.describe()
