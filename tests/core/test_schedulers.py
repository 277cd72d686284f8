"""Learning-rate schedules: each choice does what its tooltip says.

Schedules are read off as curves (the rate of each of 100 or 200 steps).
"""

from __future__ import annotations

import itertools
import sys

import pytest
import torch

from trainer_core.training.optimizers import OptimizerConfig, build_optimizer, effective_learning_rate
from trainer_core.training.schedulers import SchedulerConfig, build_scheduler

PEAK = 1e-3


def learning_rate_curve(config: SchedulerConfig, total_steps: int, peak: float = PEAK) -> list[float]:
    """The learning rate each optimizer step trains with."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=peak)
    scheduler = build_scheduler(optimizer, config, total_steps)
    rates = []
    for _ in range(total_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_constant_stays_at_the_peak_and_ignores_warmup() -> None:
    rates = learning_rate_curve(SchedulerConfig(name="constant", warmup=10), 100)
    assert rates == [PEAK] * 100


def test_warmup_rises_linearly_to_the_peak_then_constant_with_warmup_stays() -> None:
    rates = learning_rate_curve(SchedulerConfig(name="constant_with_warmup", warmup=10), 100)
    assert rates[:11] == pytest.approx([PEAK * step / 10 for step in range(11)])
    assert rates[10:] == pytest.approx([PEAK] * 90)


def test_warmup_fraction_is_a_share_of_training() -> None:
    config = SchedulerConfig(name="constant_with_warmup", warmup=0.1)
    assert config.warmup_steps(200) == 20
    rates = learning_rate_curve(config, 200)
    assert rates[19] < PEAK
    assert rates[20] == pytest.approx(PEAK)


def test_warmup_fraction_still_reaches_the_peak_on_tiny_runs() -> None:
    config = SchedulerConfig(name="constant_with_warmup", warmup=0.05)
    assert config.warmup_steps(10) == 1
    assert config.warmup_steps(1) == 0
    assert learning_rate_curve(config, 1) == [PEAK]


def test_cosine_warms_up_then_falls_to_near_zero() -> None:
    rates = learning_rate_curve(SchedulerConfig(name="cosine", warmup=10), 100)
    assert rates[10] == pytest.approx(PEAK)
    assert all(later <= earlier for earlier, later in itertools.pairwise(rates[10:]))
    assert rates[55] == pytest.approx(PEAK / 2, rel=0.01)  # halfway through the fall
    assert rates[-1] < 0.001 * PEAK


def test_cosine_with_restarts_restarts() -> None:
    rates = learning_rate_curve(SchedulerConfig(name="cosine_with_restarts", warmup=0, num_cycles=4), 100)
    jumps = [step for step in range(1, 100) if rates[step] - rates[step - 1] > 0.5 * PEAK]
    assert jumps == [25, 50, 75]
    assert min(rates[20:25]) < 0.05 * PEAK  # each cycle falls close to zero before it restarts


def test_linear_falls_in_a_straight_line_to_zero() -> None:
    rates = learning_rate_curve(SchedulerConfig(name="linear", warmup=20), 100)
    assert rates[20:] == pytest.approx([PEAK * (1 - k / 80) for k in range(80)])


def test_polynomial_power_bends_the_fall_and_min_lr_ratio_keeps_a_floor() -> None:
    linear = learning_rate_curve(SchedulerConfig(name="polynomial", warmup=0, power=1.0), 100)
    squared = learning_rate_curve(SchedulerConfig(name="polynomial", warmup=0, power=2.0), 100)
    assert linear[50] == pytest.approx(PEAK / 2)
    assert squared[50] == pytest.approx(PEAK / 4)
    floored = learning_rate_curve(SchedulerConfig(name="polynomial", warmup=0, min_lr_ratio=0.2), 100)
    assert floored[50] == pytest.approx(PEAK * (0.2 + 0.8 / 2))
    assert floored[-1] == pytest.approx(PEAK * (0.2 + 0.8 / 100))  # one step before the end
    assert min(floored) > 0.2 * PEAK


def test_cosine_min_lr_ratio_ends_at_the_floor() -> None:
    rates = learning_rate_curve(SchedulerConfig(name="cosine", warmup=10, min_lr_ratio=0.1), 100)
    assert rates[10] == pytest.approx(PEAK)
    assert min(rates[10:]) >= 0.1 * PEAK * (1 - 1e-9)
    assert rates[-1] == pytest.approx(0.1 * PEAK, rel=0.01)


def test_schedule_scales_every_param_group_from_its_own_rate() -> None:
    unet, text_encoder = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer(
        [{"params": [unet]}, {"params": [text_encoder], "lr": 5e-5}],
        OptimizerConfig(learning_rate=5e-4),
        "cpu",
    )
    scheduler = build_scheduler(optimizer, SchedulerConfig(name="linear", warmup=0), 10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert effective_learning_rate(optimizer, group=0) == pytest.approx(2.5e-4)
    assert effective_learning_rate(optimizer, group=1) == pytest.approx(2.5e-5)


def test_scheduler_state_resumes_where_it_stopped() -> None:
    config = SchedulerConfig(name="cosine", warmup=5)
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=PEAK)
    scheduler = build_scheduler(optimizer, config, 50)
    for _ in range(30):
        optimizer.step()
        scheduler.step()
    saved = scheduler.state_dict()

    resumed_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    resumed = build_scheduler(resumed_optimizer, config, 50)
    resumed.load_state_dict(saved)
    resumed_optimizer.param_groups[0]["lr"] = resumed.get_last_lr()[0]
    assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(learning_rate_curve(config, 50)[30])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"warmup": 1.5}, "whole number of steps"),
        ({"warmup": -1}, "whole number of steps"),
        ({"name": "linear", "min_lr_ratio": 0.1}, "min_lr_ratio works with the cosine and polynomial"),
        ({"name": "cosine_annealing"}, "not one of constant"),
        ({"num_cycles": 0}, "num_cycles"),
    ],
)
def test_scheduler_settings_that_cannot_work_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SchedulerConfig(**settings)  # type: ignore[arg-type]


def test_warmup_longer_than_training_is_refused() -> None:
    weight = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="warmup of 100 steps is not shorter than the 100 training steps"):
        build_scheduler(torch.optim.SGD([weight], lr=PEAK), SchedulerConfig(warmup=100), 100)


def test_cosine_floor_without_transformers_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers.optimization", None)
    weight = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ImportError, match="`pip install transformers`"):
        build_scheduler(
            torch.optim.SGD([weight], lr=PEAK), SchedulerConfig(name="cosine", min_lr_ratio=0.1), 10
        )
