"""EMA of the adapter weights: what is exported is the moving average of every step's weights."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.core.test_training_core import HashTextEncoder, SyntheticData, tiny_models
from trainer_core.adapters.config import LoRAConfig
from trainer_core.adapters.export import default_key_name, load_lora
from trainer_core.adapters.inject import inject_adapter
from trainer_core.models.diffusers_backend import DiffusersLatentCodec, DiffusersUNetDenoiser
from trainer_core.training.checkpoints import CheckpointPolicy
from trainer_core.training.config import TrainingConfig
from trainer_core.training.loop import train_lora

LORA = LoRAConfig(rank=4, alpha=4)
SUFFIXES = {"lora_A": "lora_down", "lora_B": "lora_up"}


def kohya_key(parameter_name: str) -> str:
    """``<module>.lora_A.default.weight`` → ``lora_unet_<module>.lora_down.weight``."""
    module, kind, _, _ = parameter_name.rsplit(".", 3)
    return f"{default_key_name(module)}.{SUFFIXES[kind]}.weight"


def lora_values(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {kohya_key(n): p.detach().double().clone() for n, p in network.named_parameters() if "lora_" in n}


def train_recording(steps: int, ema_decay: float, checkpoints: CheckpointPolicy | None = None):
    """Train, recording the adapter's raw weights after every step; returns (result, per-step weights)."""
    unet, vae, alphas = tiny_models()
    per_step: list[dict[str, torch.Tensor]] = []
    result = train_lora(
        DiffusersUNetDenoiser(unet, alphas),
        HashTextEncoder(),
        DiffusersLatentCodec(vae, 1.0),
        SyntheticData(),
        LORA,
        TrainingConfig(steps=steps, learning_rate=5e-3, ema_decay=ema_decay),
        on_step=lambda report: per_step.append(lora_values(unet)),
        checkpoints=checkpoints,
    )
    return result, per_step


def initial_adapter() -> dict[str, torch.Tensor]:
    """The adapter before step 1: the same seeded injection on a fresh copy of the model."""
    unet = copy.deepcopy(tiny_models()[0])
    inject_adapter(unet, LORA, seed=0)
    return lora_values(unet)


def expected_ema(initial: dict[str, torch.Tensor], per_step: list[dict[str, torch.Tensor]], decay: float):
    """The moving average computed here, in float64: update n (from 0) uses min(decay, (1+n)/(10+n))."""
    average = {k: v.clone() for k, v in initial.items()}
    history = []
    for n, weights in enumerate(per_step):
        d = min(decay, (1 + n) / (10 + n))
        average = {k: d * average[k] + (1 - d) * weights[k] for k in average}
        history.append(average)
    return history


def test_exported_lora_and_checkpoints_are_the_moving_average_of_each_steps_weights(tmp_path):
    decay, steps = 0.6, 24  # the warm-up reaches the cap at update 14: both parts are exercised
    result, per_step = train_recording(steps, decay, CheckpointPolicy(tmp_path, "run", every=10))
    expected = expected_ema(initial_adapter(), per_step, decay)

    assert set(result.weights) - {k for k in result.weights if k.endswith(".alpha")} == set(expected[-1])
    for key, value in expected[-1].items():
        torch.testing.assert_close(result.weights[key].double(), value, rtol=1e-5, atol=1e-7)
    # The average is not the last step's weights: EMA did something.
    last_up = [k for k in per_step[-1] if ".lora_up." in k]
    assert max((result.weights[k].double() - per_step[-1][k]).abs().max().item() for k in last_up) > 1e-4
    # A checkpoint holds the average as it was at its step.
    checkpoint = load_lora(tmp_path / "run_step000010.safetensors")
    for key, value in expected[9].items():
        torch.testing.assert_close(checkpoint[key].double(), value, rtol=1e-5, atol=1e-7)


def test_without_ema_the_export_is_the_last_steps_weights_bit_for_bit():
    result, per_step = train_recording(6, 0.0)
    for key, value in per_step[-1].items():
        assert torch.equal(result.weights[key], value.float()), key


def test_ema_decay_must_be_below_one():
    with pytest.raises(ValueError, match="ema_decay"):
        TrainingConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainingConfig(ema_decay=-0.1)
