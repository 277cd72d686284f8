"""The run's log: loss and learning rate of every optimizer step, in a CSV file beside the checkpoints and,
when the ``tensorboard`` package is installed, in TensorBoard event files.

The CSV (``step,loss,learning_rate``) is written line by line and flushed, so a run that is stopped keeps
every step it reported. A resumed run continues the file: lines from steps it trains again are replaced.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from .results import StepReport

log = logging.getLogger(__name__)

CSV_COLUMNS = ("step", "loss", "learning_rate")


def log_paths(folder: Path, stem: str) -> tuple[Path, Path]:
    """Where run ``stem`` writes its log: the CSV file and the TensorBoard folder."""
    return folder / f"{stem}_loss.csv", folder / "tensorboard" / stem


def tensorboard_writer(folder: Path) -> Any | None:
    """A TensorBoard ``SummaryWriter`` into ``folder``, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(folder))


class TrainingLog:
    """``on_step`` callback: appends each step's loss and learning rate to the CSV (and TensorBoard)."""

    def __init__(self, csv_path: Path, tensorboard_folder: Path | None = None):
        self.csv_path = csv_path
        self.tensorboard_folder = tensorboard_folder
        self.writer: Any | None = None
        self.started = False

    def _start(self, first_step: int) -> None:
        """Keep the lines of earlier steps (a resumed run) and drop those this run trains again."""
        kept: list[list[str]] = []
        if self.csv_path.is_file():
            with self.csv_path.open(newline="") as handle:
                rows = list(csv.reader(handle))
            kept = [row for row in rows[1:] if row and row[0].isdigit() and int(row[0]) < first_step]
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        with self.csv_path.open("w", newline="") as handle:
            csv.writer(handle).writerows([list(CSV_COLUMNS), *kept])
        if self.tensorboard_folder is not None:
            self.writer = tensorboard_writer(self.tensorboard_folder)
            if self.writer is None:
                log.info("tensorboard is not installed: the loss is logged to %s only", self.csv_path)
        self.started = True

    def __call__(self, report: StepReport) -> None:
        if not self.started:
            self._start(report.step)
        with self.csv_path.open("a", newline="") as handle:
            csv.writer(handle).writerow([report.step, f"{report.loss:.8g}", f"{report.learning_rate:.8g}"])
        if self.writer is not None:
            self.writer.add_scalar("loss", report.loss, report.step)
            self.writer.add_scalar("learning_rate", report.learning_rate, report.step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_training_log(csv_path: Path) -> list[dict[str, float]]:
    """The CSV's rows as numbers: ``{"step", "loss", "learning_rate"}`` each."""
    with csv_path.open(newline="") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]
