"""LoCon and block weights at the MODEL level, on ComfyUI's own model classes inside this process: the LoCon
file of an SD UNet goes into diffusers with every key placed, the memory estimate counts the convolution
adapters exactly, a DiT told to train convolutions says it has none and trains on, SDXL's LoCon loads back
as trained, and a DiT's double / single block weights freeze what they should.

The canvas-level claims (the file, LoraLoader, the train-time picture, the optimizer's groups) are in
``test_locon.py`` and ``test_block_weights.py``, on a real server.
"""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from comfy_inproc import load_pack, tiny_model_patcher  # noqa: E402
from family_models import family_patcher  # noqa: E402

from tests.integration.test_diffusers_key_formats import (  # noqa: E402
    assert_clean,
    comfy_model_on_meta,
    delta_size,
    diffusers_deltas,
    load_into_diffusers,
)
from tests.integration.test_model_families import (  # noqa: E402
    LATENT_CHANNELS,
    Data,
    FakeCodec,
    FakeTextEncoder,
    assert_loads_back_as_trained,
)

pytestmark = pytest.mark.comfy

RANK, ALPHA, CONV_RANK, CONV_ALPHA = 4, 2.0, 8, 3.0
ADAPTERS = ("lora", "loha", "lokr", "dora")


@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.mark.parametrize("family, pipeline_name", [("sd15", "StableDiffusionPipeline"),
                                                   ("sdxl", "StableDiffusionXLPipeline")])
def test_the_locon_file_loads_into_diffusers_with_every_key_placed(pack, family, pipeline_name):
    """kohya's LoCon names and 4-D tensors (ResBlock, down- and upsampler convolutions) go through the
    pipeline's own ``lora_state_dict`` into a diffusers UNet: every layer lands, none rescaled."""
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.adapters.adapter_types import ADAPTER
    from lora_lab.trainer_core.adapters.config import LoRAConfig
    from lora_lab.trainer_core.adapters.inject import inject_adapter
    from lora_lab.trainer_core.training.bookkeeping import extract_weights

    model = comfy_model_on_meta(family)
    network = model.diffusion_model
    namer = bridge.kohya_key_namer(types.SimpleNamespace(model=model))
    adapter = inject_adapter(network, LoRAConfig(rank=RANK, alpha=ALPHA, conv_rank=CONV_RANK, conv_alpha=CONV_ALPHA),
                             seed=0)
    generator = torch.Generator().manual_seed(1)
    trained, conv_layers = [], 0
    for _, layer in adapter.layers():
        down, up = layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]
        down.weight = torch.nn.Parameter(torch.randn(down.weight.shape, generator=generator) / 8)
        up.weight = torch.nn.Parameter(torch.randn(up.weight.shape, generator=generator) / 8)
        trained.append(delta_size(up.weight, down.weight, layer.scaling[ADAPTER]))
        conv_layers += down.weight.dim() == 4 and down.weight.shape[-1] == 3
    file = extract_weights(adapter, namer)
    assert conv_layers >= 6  # two per ResBlock, the downsampler and the upsampler
    assert any(".lora_down.weight" in k and v.shape[-2:] == (3, 3) and v.shape[0] == CONV_RANK for k, v in file.items())
    fit = bridge.lora_fit(types.SimpleNamespace(model=comfy_model_on_meta(family)), None, file)
    assert fit == (len(trained), len(trained), [])

    loaded, log = load_into_diffusers(pipeline_name, family, file)
    assert_clean(log)
    deltas = diffusers_deltas(loaded)
    assert len(deltas) == len(trained)
    assert sum(numel for numel, _ in deltas) == sum(numel for numel, _ in trained)
    assert sum(size for _, size in deltas) == pytest.approx(sum(size for _, size in trained), rel=1e-6)


@pytest.mark.parametrize("adapter_type", ADAPTERS)
def test_the_memory_estimate_counts_the_conv_adapters_exactly(pack, adapter_type):
    from lora_lab.trainer_core.adapters.config import LoRAConfig
    from lora_lab.trainer_core.adapters.inject import adapter_targets, autograd_safe_weights, inject_adapter
    from lora_lab.trainer_core.training.memory_estimate import network_adapter_parameters

    network = family_patcher("sd15").model.diffusion_model
    counts = {}
    for conv_rank in (0, CONV_RANK):
        config = LoRAConfig(adapter=adapter_type, rank=RANK, alpha=ALPHA, conv_rank=conv_rank, conv_alpha=CONV_ALPHA)
        estimated = network_adapter_parameters(network, adapter_targets(network, config), config)
        with autograd_safe_weights(network):
            adapter = inject_adapter(network, config, seed=0)
            injected = sum(p.numel() for p in adapter.named_parameters().values())
            adapter.remove()
        assert estimated == injected, (conv_rank, estimated, injected)
        counts[conv_rank] = estimated
    assert counts[CONV_RANK] > counts[0]


def train_family(family: str, steps: int, on_step=None, **lora):
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.adapters.config import LoRAConfig
    from lora_lab.trainer_core.training.config import TrainingConfig
    from lora_lab.trainer_core.training.loop import train_lora

    patcher = tiny_model_patcher(family)
    denoiser = bridge.ComfyDenoiser(patcher.clone())
    result = train_lora(
        denoiser, FakeTextEncoder(family, tokens=16), FakeCodec(LATENT_CHANNELS[family]), Data(),
        LoRAConfig(**{"rank": RANK, "alpha": RANK, **lora}),
        TrainingConfig(steps=steps, learning_rate=1e-2, mixed_precision="fp32"),
        key_namer=bridge.kohya_key_namer(patcher), on_step=on_step,
    )
    return patcher, denoiser, result


def test_conv_rank_on_a_dit_says_it_has_no_convolutions_and_trains_its_linear_layers(pack, caplog):
    with caplog.at_level(logging.WARNING):
        _, _, with_conv = train_family("flux", steps=3, conv_rank=CONV_RANK)
    assert "conv_rank is 8, but Flux has no ResBlock convolutions" in caplog.text
    assert "training its linear layers only" in caplog.text
    assert len(with_conv.losses) == 3 and all(np.isfinite(with_conv.losses))
    _, _, without = train_family("flux", steps=3)
    assert set(with_conv.weights) == set(without.weights)  # the same layers, no convolution among them


def test_sdxl_locon_loads_back_through_comfyuis_loader_as_trained(pack, caplog):
    """Every key placed by ComfyUI's own loader, and the load-time output equals the train-time one."""
    steps = 20
    patcher = tiny_model_patcher("sdxl")
    from lora_lab.nodes import bridge

    probe_denoiser = bridge.ComfyDenoiser(patcher.clone())
    g = torch.Generator().manual_seed(3)
    probe = (torch.randn(1, 4, 8, 8, generator=g),
             probe_denoiser.training_sigmas[len(probe_denoiser.training_sigmas) // 2].reshape(1),
             FakeTextEncoder("sdxl", tokens=16).encode(["probe"])[0])
    with torch.no_grad():
        base_output = probe_denoiser.denoise(*probe)
    seen = {}
    holder = {}

    def on_step(report):
        if report.step == steps:
            with torch.no_grad():
                seen["train_time"] = holder["denoiser"].denoise(*probe)

    from lora_lab.trainer_core.adapters.config import LoRAConfig
    from lora_lab.trainer_core.training.config import TrainingConfig
    from lora_lab.trainer_core.training.loop import train_lora

    holder["denoiser"] = bridge.ComfyDenoiser(patcher.clone())
    result = train_lora(
        holder["denoiser"], FakeTextEncoder("sdxl", tokens=16), FakeCodec(4), Data(),
        LoRAConfig(rank=RANK, alpha=RANK, adapter="lokr", conv_rank=CONV_RANK, conv_alpha=CONV_ALPHA),
        TrainingConfig(steps=steps, learning_rate=1e-2, mixed_precision="fp32"),
        key_namer=bridge.kohya_key_namer(patcher), on_step=on_step,
    )
    convs = {key.split(".")[0] for key in result.weights if "resnets" in key or "samplers" in key}
    assert len(convs) >= 6, sorted(convs)
    assert_loads_back_as_trained(bridge, patcher, result.weights, probe, seen["train_time"], base_output, caplog)


def test_a_dits_double_blocks_weighted_0_stay_at_their_start_while_its_single_blocks_learn(pack, caplog):
    with caplog.at_level(logging.WARNING):  # a UNet group's weight on a DiT: a console note, nothing else
        _, _, result = train_family("flux", steps=5, double_blocks_lr_weight=0.0, input_blocks_lr_weight=0.5)
    assert "input_blocks_lr_weight is 0.5, but the layers trained in Flux have no input_blocks" in caplog.text
    ups = {key: value for key, value in result.weights.items() if key.endswith(".lora_up.weight")}
    double = [value for key, value in ups.items() if key.startswith("lora_unet_double_blocks_")]
    single = [value for key, value in ups.items() if key.startswith("lora_unet_single_blocks_")]
    assert double and single
    assert all(not value.any() for value in double)  # lora_up starts at zero and never moved
    assert all(value.abs().max() > 0 for value in single)
