"""base_weights at the MODEL level: training runs on a low-precision copy, the shared MODEL stays as it was.

Uses ComfyUI's own model classes and ModelPatcher in this process (tiny SDXL, CPU), like
``test_model_families.py``, so the dtype of the weights inside the training forward can be watched.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from comfy_inproc import load_pack, tiny_model_patcher  # noqa: E402

pytestmark = pytest.mark.comfy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_model_families import LATENT_CHANNELS, Data, FakeCodec, FakeTextEncoder  # noqa: E402

LAYER = "input_blocks.3.1.transformer_blocks.0.attn1.to_q"  # a Linear inside the tiny SDXL's transformer


@pytest.fixture(scope="module")
def pack():
    return load_pack()


def probe(patcher, family="sdxl"):
    """The MODEL's output on a fixed input, loaded and called the way a sampler does."""
    import comfy.model_management
    from lora_lab.nodes import bridge

    comfy.model_management.load_models_gpu([patcher])
    denoiser = bridge.ComfyDenoiser(patcher)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, LATENT_CHANNELS[family], 8, 8, generator=g)
    sigma = denoiser.training_sigmas[len(denoiser.training_sigmas) // 2].reshape(1)
    with torch.no_grad():
        return denoiser.denoise(x, sigma, FakeTextEncoder(family).encode(["probe"])[0])


def loaded_clones(patcher) -> list:
    import comfy.model_management

    return [m.model for m in comfy.model_management.current_loaded_models if m.model is patcher]


@pytest.mark.parametrize(
    "family, layer, choice, dtype",
    [
        ("sdxl", LAYER, "fp8_e4m3fn", torch.float8_e4m3fn),
        ("sdxl", LAYER, "bf16", torch.bfloat16),
        # Flux's blocks update activations in place: the upcast layers must allow it.
        ("flux", "double_blocks.0.img_attn.proj", "fp8_e4m3fn", torch.float8_e4m3fn),
    ],
)
def test_training_sees_the_chosen_precision_and_the_shared_model_is_untouched(
    pack, family, layer, choice, dtype
):
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.adapters.config import LoRAConfig
    from lora_lab.trainer_core.training.config import TrainingConfig
    from lora_lab.trainer_core.training.loop import train_lora
    from lora_lab.trainer_core.training.memory import stored_weight_bytes

    model = tiny_model_patcher(family)
    original = model.model.diffusion_model
    before = {n: (p, p.clone()) for n, p in original.named_parameters()}
    output_before = probe(model, family)

    patcher = model.clone()
    assert bridge.use_base_weights(patcher, choice)
    denoiser = bridge.ComfyDenoiser(patcher)
    bridge.load_for_training(patcher, True)
    network = denoiser.network
    assert network is not original
    sizes = stored_weight_bytes(network)
    dtype_name = str(dtype).removeprefix("torch.")
    assert sizes[dtype_name] > 0.9 * sum(sizes.values()), sizes
    seen = []
    watched = network.get_submodule(layer)
    watched.register_forward_pre_hook(lambda module, args: seen.append(module.weight.dtype))
    try:
        result = train_lora(
            denoiser,
            FakeTextEncoder(family),
            FakeCodec(LATENT_CHANNELS[family]),
            Data(),
            LoRAConfig(rank=4, alpha=4),
            TrainingConfig(steps=5, learning_rate=1e-2, mixed_precision="fp32"),
            key_namer=bridge.kohya_key_namer(patcher),
        )
    finally:
        bridge.release(patcher)
    assert seen and set(seen) == {dtype}, "the training forward did not run on the low-precision weights"
    assert all(np.isfinite(result.losses))

    assert model.model.diffusion_model is original and not loaded_clones(patcher)
    for name, param in original.named_parameters():
        assert param is before[name][0] and torch.equal(param, before[name][1]), name
    assert torch.equal(probe(model, family), output_before)


def test_loras_already_on_the_model_are_applied_to_the_copy_and_taken_off_after(pack):
    from lora_lab.nodes import bridge

    model = tiny_model_patcher("sdxl")
    key = f"diffusion_model.{LAYER}.weight"
    layer = model.model.diffusion_model.get_submodule(LAYER)
    original = layer.weight.clone()
    stacked = model.clone()
    stacked.add_patches({key: ("diff", (torch.full_like(original, 0.5),))}, 1.0)
    bridge.load_for_training(stacked, True)  # the stacked MODEL in use: its patch is in the shared weights
    assert torch.allclose(layer.weight, original + 0.5)

    patcher = stacked.clone()
    assert bridge.use_base_weights(patcher, "fp8_e4m3fn")
    bridge.load_for_training(patcher, True)
    copied = patcher.model.diffusion_model.get_submodule(LAYER).weight
    assert copied.dtype == torch.float8_e4m3fn
    # The patch once (not twice), rounded to fp8 (ComfyUI rounds patched fp8 weights stochastically: up to
    # one fp8 step, 1/8 of the value, off).
    expected = original + 0.5
    assert ((copied.float() - expected).abs() <= 0.13 * expected.abs() + 0.01).all()
    assert (copied.float() - expected).mean().abs() < 0.01
    bridge.release(patcher)
    assert torch.equal(layer.weight, original)


def test_unsupported_precision_on_the_device_is_refused_clearly(pack, monkeypatch):
    import comfy.model_management
    from lora_lab.nodes import bridge

    # CPUs can convert fp8: it is storage only, upcast per layer.
    assert bridge.base_weights_problem("fp8_e4m3fn") is None
    monkeypatch.setattr(comfy.model_management, "supports_cast", lambda device, dtype: False)
    problem = bridge.base_weights_problem("fp8_e4m3fn")
    assert problem and "base_weights" in problem and "'as loaded'" in problem
    assert bridge.base_weights_problem("as loaded") is None
