"""The smoothed loss curve, one formula for every room that shows it: the live chart while a run trains
(``training.live_progress``) and the loss image after it (``pictures.plots``), so the two curves agree."""

from __future__ import annotations

from collections.abc import Sequence


def smoothing_weight(total: int) -> float:
    """The moving average's weight for a curve of ``total`` steps: heavier on longer runs (0.6 to 0.95)."""
    return min(0.95, max(0.6, 1 - 10 / max(1, total)))


class MovingAverage:
    """Bias-corrected exponential moving average (TensorBoard's smoothing), fed one value at a time."""

    def __init__(self) -> None:
        self.average = 0.0
        self.count = 0

    def add(self, value: float, weight: float) -> float:
        """Take ``value`` in; the smoothed value up to it."""
        self.average = weight * self.average + (1 - weight) * value
        self.count += 1
        return self.average / (1 - weight**self.count)


def smooth(values: Sequence[float], weight: float | None = None) -> list[float]:
    """``values`` smoothed, each point from those up to it; ``weight`` defaults to ``smoothing_weight`` of
    their number."""
    weight = smoothing_weight(len(values)) if weight is None else weight
    average = MovingAverage()
    return [average.add(value, weight) for value in values]
