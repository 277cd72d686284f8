"""The GPU memory estimate: exact where it can be (adapter and optimizer state), and it moves the
right way with each setting a user changes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer_core.adapters.config import LoRAConfig
from trainer_core.adapters.inject import find_target_modules, inject_adapter
from trainer_core.training.memory_estimate import (
    GIB,
    adapter_parameter_count,
    estimate_training_memory,
    layer_shapes,
    memory_advice,
    tensor_bytes,
)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.to_q, self.to_k, self.ff = nn.Linear(32, 32), nn.Linear(48, 32), nn.Linear(32, 96)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.proj = nn.Conv2d(8, 16, 1)


@pytest.mark.parametrize("adapter_type", ["lora", "loha", "dora", "lokr"])
@pytest.mark.parametrize("rank", [1, 4, 8])
def test_adapter_parameters_match_what_peft_injects(rank, adapter_type):
    network = Net()
    targets = find_target_modules(network, "all_linear")
    expected = adapter_parameter_count(layer_shapes(network, targets), rank, adapter_type)
    config = LoRAConfig(rank=rank, alpha=rank, target="all_linear", adapter=adapter_type)
    adapter = inject_adapter(network, config, seed=0)
    injected = sum(p.numel() for n, p in network.named_parameters() if p.requires_grad)
    assert injected == expected
    adapter.remove()


def _estimate(**changes):
    settings = dict(base_weight_bytes=2 * GIB, adapter_parameters=10_000_000, optimizer="AdamW", family="SDXL",
                    batch_size=1, width=1024, height=1024, precision="bf16", gradient_checkpointing=False)
    return estimate_training_memory(**{**settings, **changes})


def test_each_setting_moves_the_estimate_the_right_way():
    base = _estimate()
    assert base.base_weights == 2 * GIB and base.adapter == 80_000_000 and base.optimizer_state == 80_000_000
    assert _estimate(gradient_checkpointing=True).activations < 0.5 * base.activations
    assert _estimate(batch_size=2).activations == pytest.approx(2 * base.activations, rel=1e-6)
    assert _estimate(width=512, height=512).activations == pytest.approx(base.activations / 4, rel=1e-6)
    assert _estimate(precision="fp32").activations == pytest.approx(2 * base.activations, rel=1e-6)
    assert _estimate(optimizer="AdamW8bit").optimizer_state == base.optimizer_state // 4
    assert _estimate(optimizer="Prodigy").optimizer_state == 2 * base.optimizer_state
    assert _estimate(ema=True).optimizer_state == base.optimizer_state * 12 // 8
    assert _estimate(optimizer_state_on_cpu=True, ema=True).optimizer_state == 0
    assert _estimate(family="Flux").activations > base.activations > _estimate(family="BaseModel").activations
    assert "estimated GPU memory" in base.describe() and "activations" in base.describe()


def test_tensor_bytes_counts_the_network_as_stored():
    network = Net()
    fp32 = tensor_bytes(network)
    assert tensor_bytes(network.to(torch.float16)) == fp32 // 2


def test_advice_stops_only_a_run_that_cannot_fit_and_says_what_to_change():
    estimate = _estimate()
    assert memory_advice(estimate, 100 * GIB, gradient_checkpointing=False, optimizer="AdamW", batch_size=1) == (
        "fits", None)
    exact = estimate.total - estimate.activations
    verdict, message = memory_advice(estimate, exact + GIB // 10, gradient_checkpointing=False, optimizer="AdamW",
                                     batch_size=2)
    assert verdict == "tight" and "gradient_checkpointing" in message and "batch_size" in message
    verdict, message = memory_advice(estimate, exact // 2, gradient_checkpointing=True, optimizer="AdamW8bit",
                                     batch_size=1)
    assert verdict == "no" and "GiB" in message and "gradient_checkpointing" not in message


def test_clips_cost_memory_in_proportion_to_their_latent_frames():
    """A 17-frame Wan clip is 5 latent frames: its activations are five images' of the same size; the rest
    (weights, adapter, optimizer) does not change with the clip."""
    image, clip = _estimate(family="WAN21"), _estimate(family="WAN21", latent_frames=5)
    assert clip.activations == pytest.approx(5 * image.activations, rel=1e-6)
    assert (clip.base_weights, clip.adapter, clip.optimizer_state) == (
        image.base_weights, image.adapter, image.optimizer_state)
    exact = clip.total - clip.activations
    verdict, message = memory_advice(clip, exact + GIB // 10, gradient_checkpointing=True, optimizer="AdamW8bit",
                                     batch_size=1, latent_frames=5)
    assert verdict == "tight" and "shorter clips" in message and "5 latent frames" in message
    _, image_message = memory_advice(image, image.total - 1, gradient_checkpointing=True, optimizer="AdamW8bit",
                                     batch_size=1)
    assert "shorter clips" not in image_message
