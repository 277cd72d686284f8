"""Optimizer settings from the settings node reach the optimizer Train LoRA picks, and only that one."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests.core.test_training_core import HashTextEncoder, SyntheticData, tiny_models
from trainer_core.adapters.config import LoRAConfig
from trainer_core.models.diffusers_backend import DiffusersLatentCodec, DiffusersUNetDenoiser
from trainer_core.training.config import TrainingConfig
from trainer_core.training.loop import train_lora
from trainer_core.training.optimizer_settings import USED_BY, for_optimizer, parse_betas, used_by_text
from trainer_core.training.optimizers import (
    OPTIMIZER_CHOICES,
    OptimizerConfig,
    build_optimizer,
    effective_learning_rate,
)


def quadratic(
    optimizer: torch.optim.Optimizer, weight: torch.Tensor, target: torch.Tensor, steps: int
) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        ((weight - target) ** 2).mean().backward()
        optimizer.step()


def prodigy_step_size(d_coef: float) -> float:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.zeros(64))
    optimizer = build_optimizer([weight], for_optimizer(OptimizerConfig(d_coef=d_coef), "Prodigy"), "cpu")
    assert optimizer.param_groups[0]["d_coef"] == d_coef
    quadratic(optimizer, weight, torch.randn(64), 60)
    return effective_learning_rate(optimizer)  # d x lr: the step size Prodigy found


def test_prodigy_d_coef_scales_the_step_size_it_finds():
    found = {d_coef: prodigy_step_size(d_coef) for d_coef in (0.25, 1.0, 4.0)}
    assert found[0.25] < 0.5 * found[1.0] and found[4.0] > 2 * found[1.0], found


def train_adafactor(relative_step: bool):
    unet, vae, alphas = tiny_models()
    return train_lora(
        DiffusersUNetDenoiser(unet, alphas),
        HashTextEncoder(),
        DiffusersLatentCodec(vae, 1.0),
        SyntheticData(),
        LoRAConfig(rank=4, alpha=4),
        TrainingConfig(steps=6, learning_rate=1e-4),
        optimizer=for_optimizer(OptimizerConfig(relative_step=relative_step), "Adafactor"),
    )


def test_adafactor_relative_step_on_trains_at_its_own_rate_off_at_the_chosen_one():
    fixed, relative = train_adafactor(False), train_adafactor(True)
    assert max(fixed.learning_rates) == pytest.approx(1e-4)  # the training learning rate (after warmup)
    assert relative.learning_rates == pytest.approx([1e-2] * 6)  # min(1e-2, 1/sqrt(step))
    up = [k for k in fixed.weights if ".lora_up." in k]
    size = {
        name: sum(r.weights[k].abs().sum().item() for k in up)
        for name, r in (("fixed", fixed), ("rel", relative))
    }
    assert size["rel"] > 10 * size["fixed"], size


def test_weight_decay_from_the_settings_shrinks_weights_the_loss_does_not_use():
    def unused_weight_after(weight_decay: float) -> float:
        torch.manual_seed(0)
        layer = torch.nn.Linear(2, 1, bias=False)
        start = layer.weight.detach().clone()
        config = replace(
            for_optimizer(OptimizerConfig(weight_decay=weight_decay), "AdamW"), learning_rate=0.1
        )
        optimizer = build_optimizer(layer.parameters(), config, "cpu")
        for _ in range(20):
            optimizer.zero_grad()
            (layer(torch.tensor([[1.0, 0.0]])) - 1.0).pow(2).mean().backward()
            optimizer.step()
        return (layer.weight.detach()[0, 1] / start[0, 1]).item()

    assert unused_weight_after(0.0) == pytest.approx(1.0)
    assert unused_weight_after(0.5) == pytest.approx((1 - 0.1 * 0.5) ** 20)


def test_settings_the_chosen_optimizer_does_not_use_are_ignored(caplog):
    settings = OptimizerConfig(
        relative_step=True, d_coef=3.0, momentum=0.9, weight_decay=0.05, betas=(0.8, 0.9)
    )
    with caplog.at_level("INFO", logger="trainer_core.training.optimizer_settings"):
        adamw = for_optimizer(settings, "AdamW")
    # relative_step left on would have dropped AdamW's learning rate: it must not reach AdamW.
    assert adamw == OptimizerConfig(weight_decay=0.05, betas=(0.8, 0.9))
    assert "relative_step=True" in caplog.text and "d_coef=3.0" in caplog.text
    assert for_optimizer(settings, "Adafactor") == OptimizerConfig(
        name="Adafactor", relative_step=True, weight_decay=0.05
    )
    assert for_optimizer(settings, "SGD").momentum == 0.9
    assert for_optimizer(settings, "Prodigy").d_coef == 3.0
    assert for_optimizer(None, "Lion", True) == OptimizerConfig(name="Lion", allow_8bit_fallback=True)


def test_every_setting_names_the_optimizers_that_use_it():
    assert set(USED_BY) == {
        "weight_decay",
        "betas",
        "eps",
        "momentum",
        "d_coef",
        "safeguard_warmup",
        "use_bias_correction",
        "decouple",
        "relative_step",
        "scale_parameter",
        "warmup_init",
    }
    assert all(set(users) <= set(OPTIMIZER_CHOICES) for users in USED_BY.values())
    assert used_by_text("d_coef") == "Used by Prodigy; ignored when Train LoRA's optimizer is another one."
    assert used_by_text("weight_decay") == "Used by every optimizer."


def test_betas_are_two_numbers_or_empty():
    assert parse_betas("0.9, 0.99") == (0.9, 0.99)
    assert parse_betas(" (0.95 0.999) ") == (0.95, 0.999)
    assert parse_betas("") is None
    with pytest.raises(ValueError, match="betas must be two numbers"):
        parse_betas("0.9")
    with pytest.raises(ValueError, match="betas must be two numbers"):
        parse_betas("fast, slow")
