"""The run's loss log: a CSV beside the checkpoints, kept across a resume, and TensorBoard when installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from trainer_core.training.results import StepReport
from trainer_core.training.train_log import TrainingLog, log_paths, read_training_log


def _log_steps(log: TrainingLog, steps: range, total: int, loss_of=lambda step: 1.0 / step) -> None:
    for step in steps:
        log(StepReport(step, total, loss_of(step), 1e-4 * step))
    log.close()


def test_each_step_is_a_line_with_loss_and_learning_rate(tmp_path: Path):
    csv_path, _ = log_paths(tmp_path, "my_lora")
    assert csv_path == tmp_path / "my_lora_loss.csv"
    _log_steps(TrainingLog(csv_path), range(1, 4), 3)
    assert csv_path.read_text().splitlines()[0] == "step,loss,learning_rate"
    assert read_training_log(csv_path) == [
        {"step": step, "loss": pytest.approx(1.0 / step), "learning_rate": pytest.approx(1e-4 * step)}
        for step in (1, 2, 3)
    ]


def test_a_resumed_run_continues_the_log_and_a_new_run_starts_it_again(tmp_path: Path):
    csv_path = tmp_path / "run_loss.csv"
    _log_steps(TrainingLog(csv_path), range(1, 6), 8)  # cancelled after step 5, checkpoint at step 4
    _log_steps(TrainingLog(csv_path), range(5, 9), 8, loss_of=lambda step: 10.0 + step)  # resumed from step 4
    rows = read_training_log(csv_path)
    assert [row["step"] for row in rows] == list(range(1, 9))
    assert rows[3]["loss"] == pytest.approx(0.25) and rows[4]["loss"] == pytest.approx(15.0)  # step 5 trained again

    _log_steps(TrainingLog(csv_path), range(1, 3), 2)  # the same run name, from the start
    assert [row["step"] for row in read_training_log(csv_path)] == [1, 2]


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="tensorboard is not installed (optional): only the CSV log is written")
def test_tensorboard_gets_the_same_scalars_when_installed(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    csv_path, board = log_paths(tmp_path, "run")
    _log_steps(TrainingLog(csv_path, board), range(1, 4), 3)
    events = EventAccumulator(str(board))
    events.Reload()
    assert [event.step for event in events.Scalars("loss")] == [1, 2, 3]
    assert [event.value for event in events.Scalars("loss")] == pytest.approx([1.0, 0.5, 1 / 3])
    assert [event.value for event in events.Scalars("learning_rate")] == pytest.approx([1e-4, 2e-4, 3e-4])
