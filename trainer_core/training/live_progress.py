"""What a run looks like while it trains, for a live chart: per step the loss, its smoothed value, the
learning rate, the speed (it/s) and the time left, and when to send them.

``LiveProgress`` turns each ``StepReport`` into at most one update every ``interval`` seconds (the last
step always gets one); an update carries only the points since the previous one, and the run's whole
history is kept bounded (halved, every other point dropped, when it grows past ``max_points``), so a
client that reloads mid-run can ask for it. The clock is injectable so tests can run it on a fake one.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..smoothing import MovingAverage, smoothing_weight
from .results import StepReport

SPEED_WINDOW_SECONDS = 10.0  # it/s over the last few seconds of steps: follows a change of pace, not noise


class SpeedMeter:
    """Steps per second over the last ``window`` seconds, and the time left at that pace."""

    def __init__(self, window: float = SPEED_WINDOW_SECONDS):
        self.window = window
        self.marks: deque[tuple[float, int]] = deque()

    def mark(self, now: float, step: int) -> None:
        self.marks.append((now, step))
        while len(self.marks) > 2 and now - self.marks[1][0] >= self.window:
            self.marks.popleft()

    def rate(self) -> float | None:
        """Steps per second; None until two steps were marked at different times."""
        if len(self.marks) < 2:
            return None
        (start, first), (end, last) = self.marks[0], self.marks[-1]
        if end <= start or last <= first:
            return None
        return (last - first) / (end - start)

    def seconds_left(self, step: int, total: int) -> float | None:
        rate = self.rate()
        if step >= total:
            return 0.0
        return None if rate is None else (total - step) / rate


class LiveProgress:
    """The live chart's updates for one run. Call ``update(report)``: it returns the update to send now, or
    None while throttled. ``history()`` is everything so far (bounded), in the same shape."""

    def __init__(self, interval: float = 0.25, max_points: int = 1000, max_points_per_update: int = 200,
                 clock: Callable[[], float] = time.monotonic):
        self.interval, self.max_points, self.max_per_update = interval, max_points, max_points_per_update
        self.clock = clock
        self.speed = SpeedMeter()
        self.points: list[list[float]] = []  # [step, loss, smoothed loss, learning rate], bounded
        self.pending: list[list[float]] = []  # points not sent yet
        self.last_sent: float | None = None
        self.smoothed = MovingAverage()  # the loss image's smoothing (``trainer_core.smoothing``)
        self.latest: dict[str, Any] = {}

    def update(self, report: StepReport) -> dict[str, Any] | None:
        now = self.clock()
        self.speed.mark(now, report.step)
        smoothed = self.smoothed.add(report.loss, smoothing_weight(report.total))
        point = [report.step, report.loss, smoothed, report.learning_rate]
        self._keep(point)
        self.pending.append(point)
        rate = self.speed.rate()
        self.latest = {"step": report.step, "total": report.total, "loss": report.loss, "smoothed_loss": smoothed,
                       "learning_rate": report.learning_rate, "it_per_s": rate,
                       "eta_s": self.speed.seconds_left(report.step, report.total)}
        last = report.step >= report.total
        if not last and self.last_sent is not None and now - self.last_sent < self.interval:
            return None
        self.last_sent = now
        update = dict(self.latest, points=thinned(self.pending, self.max_per_update))
        self.pending = []
        return update

    def history(self) -> dict[str, Any]:
        """The run so far: the latest values and its bounded series of points."""
        return dict(self.latest, points=[list(p) for p in self.points])

    def _keep(self, point: list[float]) -> None:
        self.points.append(point)
        if len(self.points) > self.max_points:  # every other point, keeping the newest
            self.points = self.points[::-1][::2][::-1]


def thinned(points: list[list[float]], limit: int) -> list[list[float]]:
    """At most ``limit`` of ``points``, evenly spread, always with the last one."""
    if len(points) <= limit:
        return list(points)
    stride = -(-len(points) // limit)
    return points[::-1][::stride][::-1]
