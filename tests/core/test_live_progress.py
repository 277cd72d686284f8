"""The live chart's updates (trainer_core.training.live_progress) on a fake clock: throttled, the last
step always sent, only new points in each update, it/s and time left right, history bounded."""

from __future__ import annotations

import pytest

from trainer_core.pictures import plots
from trainer_core.training.live_progress import LiveProgress
from trainer_core.training.results import StepReport


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(progress: LiveProgress, clock: FakeClock, total: int, seconds_per_step: float, losses=None):
    updates = []
    for step in range(1, total + 1):
        clock.now += seconds_per_step
        loss = losses[step - 1] if losses else 1.0 / step
        update = progress.update(StepReport(step=step, total=total, loss=loss, learning_rate=1e-4 * step))
        if update is not None:
            updates.append(update)
    return updates


def test_updates_are_throttled_to_the_interval_and_the_last_step_is_always_sent():
    clock = FakeClock()
    progress = LiveProgress(interval=0.25, clock=clock)
    updates = run(progress, clock, total=101, seconds_per_step=0.02)  # 50 it/s for ~2 s
    steps = [u["step"] for u in updates]
    assert steps[0] == 1 and steps[-1] == 101  # the first step at once, the last always
    assert len(updates) <= 2.02 / 0.25 + 2  # ≤ 4 a second, plus the last step
    assert steps == sorted(steps) and len(set(steps)) == len(steps)


def test_each_update_carries_only_the_new_points_and_together_every_step():
    clock = FakeClock()
    progress = LiveProgress(interval=0.25, clock=clock)
    updates = run(progress, clock, total=60, seconds_per_step=0.03)
    sent = [point[0] for u in updates for point in u["points"]]
    assert sent == list(range(1, 61))
    for update in updates:
        assert update["points"][-1][0] == update["step"]


def test_it_per_second_and_time_left_on_a_fake_clock():
    clock = FakeClock()
    progress = LiveProgress(interval=0.0, clock=clock)
    updates = run(progress, clock, total=500, seconds_per_step=0.25)  # 4 it/s
    by_step = {u["step"]: u for u in updates}
    assert by_step[1]["it_per_s"] is None and by_step[1]["eta_s"] is None  # nothing to measure yet
    assert by_step[120]["it_per_s"] == pytest.approx(4.0)
    assert by_step[120]["eta_s"] == pytest.approx(380 / 4.0)
    assert by_step[500]["eta_s"] == 0.0


def test_the_speed_follows_a_change_of_pace():
    clock = FakeClock()
    progress = LiveProgress(interval=0.0, clock=clock)
    for step in range(1, 101):
        clock.now += 0.1 if step <= 50 else 0.5  # 10 it/s, then 2 it/s for 25 s
        update = progress.update(StepReport(step=step, total=200, loss=1.0, learning_rate=1e-4))
    assert update["it_per_s"] == pytest.approx(2.0)
    assert update["eta_s"] == pytest.approx(100 / 2.0)


def test_smoothed_loss_and_learning_rate_are_those_of_the_loss_image(monkeypatch):
    drawn: list[list[float]] = []  # the smoothed curve the loss image draws, as it draws it
    smoothed = plots.smooth

    def smooth_drawn(values, weight=None):
        drawn.append(smoothed(values, weight))
        return drawn[-1]

    monkeypatch.setattr(plots, "smooth", smooth_drawn)
    runs = [[1.0, 0.2, 0.9, 0.1, 0.8, 0.3, 0.5, 0.4, 0.6, 0.2] * 3, [0.5, 0.1, 0.7], [1 / s for s in range(1, 301)]]
    for losses in runs:
        clock = FakeClock()
        progress = LiveProgress(interval=0.0, clock=clock)
        updates = run(progress, clock, total=len(losses), seconds_per_step=0.1, losses=losses)
        points = [p for u in updates for p in u["points"]]
        plots.loss_curve_image(losses, size=(160, 120))
        assert [p[1] for p in points] == losses
        assert [p[2] for p in points] == drawn[-1]  # the same numbers, not only close ones
        assert drawn[-1] != losses
    assert points[9][3] == pytest.approx(1e-3) and updates[9]["learning_rate"] == pytest.approx(1e-3)


def test_history_stays_bounded_and_keeps_the_first_and_latest_steps():
    clock = FakeClock()
    progress = LiveProgress(interval=0.25, max_points=100, max_points_per_update=40, clock=clock)
    updates = run(progress, clock, total=2000, seconds_per_step=0.01)
    history = progress.history()
    assert 50 <= len(history["points"]) <= 100
    assert history["points"][-1][0] == 2000 == history["step"]
    steps = [p[0] for p in history["points"]]
    assert steps == sorted(steps) and steps[0] <= 40
    assert max(len(u["points"]) for u in updates) <= 40  # a slow client's update is thinned, never huge


def test_a_slow_step_after_a_quiet_spell_is_sent_at_once():
    clock = FakeClock()
    progress = LiveProgress(interval=0.25, clock=clock)
    assert progress.update(StepReport(1, 10, 1.0, 1e-4)) is not None
    clock.now += 0.1
    assert progress.update(StepReport(2, 10, 1.0, 1e-4)) is None
    clock.now += 3.0
    update = progress.update(StepReport(3, 10, 1.0, 1e-4))
    assert update is not None and [p[0] for p in update["points"]] == [2, 3]
