"""Optimizers: each choice does what its tooltip says.

Optimizers train toy problems small enough to run in milliseconds (learning-rate schedules are in
test_schedulers.py). This machine has no CUDA and no bitsandbytes, so the 8-bit optimizers must
refuse clearly, or fall back when the user allowed it.
"""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch

from trainer_core.training.optimizer_packages import OptimizerUnavailableError
from trainer_core.training.optimizers import (
    EIGHT_BIT_OPTIMIZERS,
    OPTIMIZER_CHOICES,
    OptimizerConfig,
    build_optimizer,
    check_optimizer_available,
    effective_learning_rate,
)
from trainer_core.training.schedulers import SchedulerConfig, build_scheduler


def quadratic_losses(
    optimizer: torch.optim.Optimizer, weight: torch.Tensor, target: torch.Tensor, steps: int
) -> list[float]:
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = ((weight - target) ** 2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.fixture
def no_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """bitsandbytes is not installed here; make sure of it even on a machine that has it."""
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)


def fake_bitsandbytes(monkeypatch: pytest.MonkeyPatch, step_error: Exception | None) -> None:
    """A bitsandbytes whose 8-bit optimizers are torch's AdamW, failing on step when ``step_error`` is given."""

    class FakeAdamW8bit(torch.optim.AdamW):
        def step(self, closure=None):  # type: ignore[no-untyped-def]
            if step_error is not None:
                raise step_error
            return super().step(closure)

    module = types.ModuleType("bitsandbytes")
    module.__version__ = "0.0-test"  # type: ignore[attr-defined]
    module.optim = types.SimpleNamespace(AdamW8bit=FakeAdamW8bit, PagedAdamW8bit=FakeAdamW8bit)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bitsandbytes", module)


def test_each_optimizer_gets_the_learning_rate_and_betas_it_is_used_with() -> None:
    assert OptimizerConfig().resolved_learning_rate() == 1e-4
    assert OptimizerConfig(name="Prodigy").resolved_learning_rate() == 1.0
    assert OptimizerConfig(name="Lion").resolved_learning_rate() == 3e-5
    assert OptimizerConfig(name="Adafactor", relative_step=True).resolved_learning_rate() is None
    assert OptimizerConfig(name="AdamW", learning_rate=5e-4).resolved_learning_rate() == 5e-4
    assert OptimizerConfig().resolved_betas() == (0.9, 0.999)
    assert OptimizerConfig(name="Lion").resolved_betas() == (0.9, 0.99)
    assert OptimizerConfig(name="Lion", betas=(0.95, 0.98)).resolved_betas() == (0.95, 0.98)


@pytest.mark.parametrize("name", OPTIMIZER_CHOICES)
def test_every_optimizer_lowers_the_loss_of_a_toy_problem(name: str, no_bitsandbytes: None) -> None:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.zeros(8, 8))
    target = torch.randn(8, 8)
    optimizer = build_optimizer([weight], OptimizerConfig(name=name, allow_8bit_fallback=True), "cpu")
    losses = quadratic_losses(optimizer, weight, target, 20)
    assert losses[-1] < losses[0]


def test_prodigy_adapts_its_step_size() -> None:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.zeros(64))
    target = torch.randn(64)
    optimizer = build_optimizer([weight], OptimizerConfig(name="Prodigy"), "cpu")
    initial = effective_learning_rate(optimizer)
    assert initial == pytest.approx(1e-6)  # d0 x learning rate 1.0
    losses = quadratic_losses(optimizer, weight, target, 100)
    assert effective_learning_rate(optimizer) > 10_000 * initial
    assert losses[-1] < 0.1 * losses[0]


def test_prodigy_effective_rate_follows_the_schedule() -> None:
    weight = torch.nn.Parameter(torch.zeros(16))
    optimizer = build_optimizer([weight], OptimizerConfig(name="Prodigy"), "cpu")
    quadratic_losses(optimizer, weight, torch.ones(16), 10)
    found = effective_learning_rate(optimizer)
    optimizer.param_groups[0]["lr"] = 0.5  # what a scheduler at half the peak does
    assert effective_learning_rate(optimizer) == pytest.approx(found / 2)


def test_prodigy_with_an_adamw_learning_rate_warns(caplog: pytest.LogCaptureFixture) -> None:
    weight = torch.nn.Parameter(torch.zeros(4))
    with caplog.at_level(logging.WARNING, logger="trainer_core.training.optimizers"):
        build_optimizer([weight], OptimizerConfig(name="Prodigy", learning_rate=1e-4), "cpu")
    assert "expects 1.0" in caplog.text and "d_coef" in caplog.text


def test_adafactor_relative_step_trains_with_its_own_rate() -> None:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.zeros(16, 16))
    target = torch.randn(16, 16) * 0.3
    optimizer = build_optimizer([weight], OptimizerConfig(name="Adafactor", relative_step=True), "cpu")
    scheduler = build_scheduler(optimizer, SchedulerConfig(name="cosine", warmup=0.1), 150)
    assert type(scheduler).__name__ == "AdafactorSchedule"
    losses = []
    for _ in range(150):
        losses.extend(quadratic_losses(optimizer, weight, target, 1))
        scheduler.step()
    assert losses[-1] < 0.1 * losses[0]
    assert effective_learning_rate(optimizer) == pytest.approx(1e-2)  # min(1e-2, 1/sqrt(step))
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-2)


def test_adafactor_warmup_init_starts_tiny_and_grows() -> None:
    weight = torch.nn.Parameter(torch.zeros(4, 4))
    optimizer = build_optimizer(
        [weight], OptimizerConfig(name="Adafactor", relative_step=True, warmup_init=True), "cpu"
    )
    assert effective_learning_rate(optimizer) == pytest.approx(1e-6)
    quadratic_losses(optimizer, weight, torch.ones(4, 4), 100)
    assert effective_learning_rate(optimizer) == pytest.approx(1e-4)


def test_adafactor_relative_step_refuses_a_learning_rate() -> None:
    with pytest.raises(ValueError, match="learning_rate must be None"):
        OptimizerConfig(name="Adafactor", relative_step=True, learning_rate=1e-4)
    with pytest.raises(ValueError, match="warmup_init works only with relative_step"):
        OptimizerConfig(name="Adafactor", warmup_init=True)


def test_adamw_weight_decay_shrinks_weights_the_loss_does_not_use() -> None:
    def unused_weights_after(weight_decay: float) -> torch.Tensor:
        torch.manual_seed(0)
        layer = torch.nn.Linear(2, 1, bias=False)
        start = layer.weight.detach().clone()
        optimizer = build_optimizer(
            layer.parameters(), OptimizerConfig(learning_rate=0.1, weight_decay=weight_decay), "cpu"
        )
        inputs = torch.tensor([[1.0, 0.0]])  # the second input is always 0: its weight gets no gradient
        for _ in range(20):
            optimizer.zero_grad()
            (layer(inputs) - 1.0).pow(2).mean().backward()
            optimizer.step()
        return layer.weight.detach()[0, 1] / start[0, 1]

    assert unused_weights_after(0.0) == pytest.approx(1.0)
    assert unused_weights_after(0.5) == pytest.approx((1 - 0.1 * 0.5) ** 20)


def test_lion_moves_every_weight_by_exactly_the_learning_rate() -> None:
    weight = torch.nn.Parameter(torch.zeros(6))
    optimizer = build_optimizer(
        [weight], OptimizerConfig(name="Lion", learning_rate=1e-3, weight_decay=0.0), "cpu"
    )
    quadratic_losses(optimizer, weight, torch.tensor([3.0, -2.0, 0.5, -0.1, 1e-3, -7.0]), 1)
    assert weight.detach() == pytest.approx([1e-3, -1e-3, 1e-3, -1e-3, 1e-3, -1e-3])


def test_unknown_optimizer_names_the_choices() -> None:
    with pytest.raises(
        ValueError, match="AdamW8bit, Lion8bit, PagedAdamW8bit, Prodigy, Adafactor, Lion, SGD"
    ):
        OptimizerConfig(name="Adam8bit")


# --- 8-bit optimizers and missing packages ------------------------------------------------------


@pytest.mark.parametrize("name", EIGHT_BIT_OPTIMIZERS)
def test_8bit_without_bitsandbytes_says_so_and_names_the_fixes(name: str, no_bitsandbytes: None) -> None:
    config = OptimizerConfig(name=name)
    with pytest.raises(ImportError) as error:
        build_optimizer([torch.nn.Parameter(torch.zeros(4))], config, "cpu")
    message = str(error.value)
    assert f"{name} needs the Python package 'bitsandbytes', which is not installed" in message
    assert "`pip install bitsandbytes`" in message
    assert "allow_8bit_fallback" in message
    assert ("choose Lion" if name == "Lion8bit" else "choose AdamW") in message
    with pytest.raises(ImportError, match="pip install bitsandbytes"):
        check_optimizer_available(config, "cpu")


@pytest.mark.parametrize(
    ("name", "fallback"), [("AdamW8bit", "AdamW"), ("PagedAdamW8bit", "AdamW"), ("Lion8bit", "Lion")]
)
def test_8bit_fallback_trains_in_32_bit_with_a_warning(
    name: str, fallback: str, no_bitsandbytes: None, caplog: pytest.LogCaptureFixture
) -> None:
    config = OptimizerConfig(name=name, allow_8bit_fallback=True)
    check_optimizer_available(config, "cpu")
    with caplog.at_level(logging.WARNING, logger="trainer_core.training.optimizers"):
        optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(4))], config, "cpu")
    assert type(optimizer).__name__ == fallback
    assert optimizer.param_groups[0]["lr"] == config.resolved_learning_rate()
    assert f"{name} cannot run here, so training uses 32-bit {fallback}" in caplog.text


def test_8bit_with_bitsandbytes_that_cannot_run_on_the_device_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_bitsandbytes(monkeypatch, step_error=RuntimeError("no kernel for this device"))
    with pytest.raises(OptimizerUnavailableError) as error:
        build_optimizer([torch.nn.Parameter(torch.zeros(4))], OptimizerConfig(name="AdamW8bit"), "cpu")
    message = str(error.value)
    assert "AdamW8bit cannot run on cpu with the installed bitsandbytes 0.0-test" in message
    assert "no kernel for this device" in message
    assert "`pip install bitsandbytes`" in message and "allow_8bit_fallback" in message

    fallback = build_optimizer(
        [torch.nn.Parameter(torch.zeros(4))],
        OptimizerConfig(name="AdamW8bit", allow_8bit_fallback=True),
        "cpu",
    )
    assert type(fallback) is torch.optim.AdamW


def test_8bit_uses_bitsandbytes_where_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_bitsandbytes(monkeypatch, step_error=None)
    optimizer = build_optimizer(
        [torch.nn.Parameter(torch.zeros(4))], OptimizerConfig(name="AdamW8bit", weight_decay=0.05), "cpu"
    )
    assert type(optimizer).__name__ == "FakeAdamW8bit"
    assert optimizer.param_groups[0]["weight_decay"] == 0.05


@pytest.mark.parametrize(
    ("name", "blocked", "pip_command"),
    [
        ("Prodigy", ["prodigyopt"], "pip install prodigyopt"),
        ("Adafactor", ["transformers.optimization"], "pip install transformers"),
        ("Lion", ["lion_pytorch", "bitsandbytes"], "pip install lion-pytorch"),
    ],
)
def test_missing_optional_package_names_the_pip_command(
    name: str, blocked: list[str], pip_command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in blocked:
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=f"`{pip_command}`"):
        build_optimizer([torch.nn.Parameter(torch.zeros(4))], OptimizerConfig(name=name), "cpu")
