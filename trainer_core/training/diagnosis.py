"""Reading a loss curve the way the guides teach ("Diagnosing from loss curves"), in numbers.

Diffusion loss is noisy by nature: every step draws its own noise level, and one step's loss can be a
hundred times the next one's (measured on the toy base: 0.001 to 0.14 within ten steps of a flat run).
The noise is multiplicative, so every rule works on the logarithm of the loss and compares medians of
windows of steps, and measures movement against what random noise levels alone give, estimated from the
run itself: the spread of one step's log loss (from the median change between consecutive steps, which a
slow trend does not move) makes the median of ``n`` steps vary by about 1.25 spreads / sqrt(n). Each
verdict states its rule, its numbers and what to do, for the ``report`` output and the loss image. Pure
functions of numbers: no torch, no ComfyUI.

The rules, in the order they are tried (spikes are reported beside any of them):

- **drops then rises** (validation): the held-out loss's last measurement is above its lowest by more than
  ``RISE_SHARE``; the checkpoint nearest the lowest is named.
- **erratic**: the windows' medians jump up and down (their second differences, zero on any steady or
  smoothly bending curve) more than ``ERRATIC_MOVEMENT`` times what noise explains, or the loss ends above
  ``RISING_RATIO`` times where it began: the learning rate is likely too high.
- **drops then rises** (training loss): a window's median below ``DROP_RATIO`` of the first's, and the last
  window above it by more than ``RISE_SHARE`` and the noise.
- **flat from the start**: the median of the last ``WINDOW_SHARE`` of steps is above ``FLAT_RATIO`` times
  the first's, or its drop is within the noise: the learning rate is likely too low.
- **steadily decreasing**: otherwise.
- **sudden spikes**: a step's loss above ``SPIKE_RATIO`` times the median of the steps around it and far out
  among this run's own such ratios (upper quartile + ``SPIKE_IQRS`` interquartile ranges, in logs); the
  files in those steps' batches are named.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import median

MIN_STEPS = 10  # fewer steps than this say nothing about the curve's shape
WINDOW_SHARE = 0.2  # the first and last 20% of the steps are compared
WINDOWS = 10  # the curve's level: the medians of this many consecutive windows
MIN_WINDOW = 4  # steps, at least, in a window (fewer windows on short runs)
NOISE_MARGIN = 2.0  # a drop counts when above this many standard deviations of noise
FLAT_RATIO = 0.95  # last 20% median above this times the first 20% median: flat
RISING_RATIO = 1.25  # last 20% median above this times the first: the loss went up (rate too high)
ERRATIC_MOVEMENT = 2.0  # window medians jump this many times what noise explains: erratic
SHUFFLES = 20  # random orders of the steps that measure what noise alone gives
DROP_RATIO = 0.9  # "drops": a window median at most this share of the first window's
RISE_SHARE = 0.05  # "rises": the end 5% above the lowest point ...
RISE_SPREADS = 4.0  # ... and by more than this many standard deviations of a window's median (the lowest is biased low)
SPIKE_RATIO = 4.0  # a spike's loss is above this times the median of the steps around it ...
SPIKE_IQRS = 3.0  # ... and this many interquartile ranges above the upper quartile of all steps' (log) ratios
SPIKE_NEIGHBOURS = 10  # steps each side that make a step's local median
LISTED_SPIKES = 5  # more spikes than this are counted, the first ones named
LISTED_FILES = 4  # files named per spike
SMALLEST_LOSS = 1e-12  # a loss of 0 is read as this (logarithms)


@dataclass(frozen=True)
class Verdict:
    """One finding: ``shape`` is one of "decreasing", "flat", "overfitting", "erratic", "spikes", "short";
    ``text`` says it for a person, with its rule, numbers and the fix."""

    shape: str
    text: str


def diagnose_losses(
    losses: Sequence[float],
    validation: Mapping[int, float] | None = None,
    checkpoints: Mapping[int, str] | None = None,
    batch_files: Sequence[Sequence[str]] = (),
) -> list[Verdict]:
    """The verdicts on a run's loss per step (step ``i + 1`` is ``losses[i]``): one for the curve's shape,
    then one for sudden spikes if there are any. ``validation``: held-out loss per step; ``checkpoints``:
    step -> checkpoint name, to name the one to use; ``batch_files[i]``: the files step ``i + 1`` trained on."""
    logs = [math.log(max(float(v), SMALLEST_LOSS)) for v in losses if math.isfinite(v)]
    if len(logs) < MIN_STEPS:
        return [Verdict("short", f"Loss diagnosis: {len(logs)} steps are too few to read the curve's shape "
                                 f"(needs {MIN_STEPS}).")]
    verdicts = [_validation_rise(dict(validation or {}), dict(checkpoints or {})) or _shape(_level(logs))]
    spikes = _spikes(logs, batch_files)
    if spikes is not None:
        verdicts.append(spikes)
    return verdicts


def diagnosis_lines(verdicts: Sequence[Verdict]) -> list[str]:
    """The verdicts as report lines."""
    return [verdict.text for verdict in verdicts]


@dataclass(frozen=True)
class _Level:
    """The curve's level in log loss: window medians, first/last 20% medians, and how noisy one step is."""

    logs: list[float]  # the log loss of every step
    window: int  # steps per window
    medians: list[float]  # of consecutive windows
    first: float  # median of the first WINDOW_SHARE of steps
    last: float  # ... and of the last
    edge: int  # steps in each of those
    spread: float  # one step's noise (robust standard deviation of the log loss)

    def median_noise(self, count: int) -> float:
        """The standard deviation of the median of ``count`` noisy steps: ~1.25 spreads / sqrt(count)."""
        return 1.25 * self.spread / math.sqrt(count)


def _level(logs: list[float]) -> _Level:
    window = max(MIN_WINDOW, len(logs) // WINDOWS)
    medians = [median(logs[i : i + window]) for i in range(0, window * (len(logs) // window), window)]
    edge = max(MIN_WINDOW, round(len(logs) * WINDOW_SHARE))
    # Consecutive steps differ by noise alone (sqrt(2) spreads); 1.4826 x a median absolute value is a spread.
    changes = [abs(b - a) for a, b in zip(logs, logs[1:], strict=False)]
    spread = 1.4826 * median(changes) / math.sqrt(2)
    return _Level(logs, window, medians, median(logs[:edge]), median(logs[-edge:]), edge, spread)


def _shape(level: _Level) -> Verdict:
    ratio = math.exp(level.last - level.first)
    share = f"{round(WINDOW_SHARE * 100)}%"
    movement = _movement(level.logs, level.window)
    if movement > ERRATIC_MOVEMENT:
        return Verdict("erratic", (
            f"Loss diagnosis: erratic: the loss level (medians of {len(level.medians)} windows of {level.window} "
            f"steps) jumps up and down {movement:.1f}x as much as random noise levels explain (rule: > "
            f"{ERRATIC_MOVEMENT:g}x) — the learning rate is likely too high; try 3-10x lower."))
    # Two medians of ``edge`` steps differ by noise alone with a standard deviation of sqrt(2) median noises.
    margin = math.exp(NOISE_MARGIN * math.sqrt(2) * level.median_noise(level.edge))
    rising_above = max(RISING_RATIO, margin)
    if ratio > rising_above:
        return Verdict("erratic", (
            f"Loss diagnosis: erratic: the median loss of the last {share} of steps is {ratio:.2f}x the first "
            f"{share}'s (rule: > {rising_above:.2f}x: {RISING_RATIO:g}x, or more where noise levels move it more; "
            "the loss went up) — the learning rate is likely too high; try 3-10x lower."))
    rise = _training_rise(level)
    if rise is not None:
        return rise
    flat_above = min(FLAT_RATIO, 1 / margin)
    if ratio > flat_above:
        return Verdict("flat", (
            f"Loss diagnosis: flat from the start: the median loss of the last {share} of steps is {ratio:.2f}x "
            f"the first {share}'s (rule: > {flat_above:.2f}x: {FLAT_RATIO:g}x, or less where noise levels move "
            "it more) — the learning rate is likely too low; try 3-10x higher (or train longer)."))
    return Verdict("decreasing", (
        f"Loss diagnosis: steadily decreasing: the median loss of the last {share} of steps is {ratio:.2f}x the "
        f"first {share}'s (rule: <= {flat_above:.2f}x) and its level jumps up and down {movement:.1f}x as much "
        f"as random noise levels explain (rule: <= {ERRATIC_MOVEMENT:g}x) — training is going as it should."))


def _movement(logs: list[float], window: int) -> float:
    """How much the window medians jump up and down, over what noise alone gives: the same steps in random
    orders (fixed seed), where no step follows from the one before, give the noise's share (a trend shuffled
    in only raises it, so a steady curve is never called erratic)."""
    observed = _bending(logs, window)
    rng = random.Random(0)
    shuffled = list(logs)
    reference = 0.0
    for _ in range(SHUFFLES):
        rng.shuffle(shuffled)
        reference += _bending(shuffled, window) / SHUFFLES
    return observed / reference if reference > 0 else 0.0


def _bending(logs: list[float], window: int) -> float:
    """The mean |a - 2b + c| over consecutive window medians a, b, c: zero on any steady or smoothly
    bending curve."""
    medians = [median(logs[i : i + window]) for i in range(0, window * (len(logs) // window), window)]
    if len(medians) < 3:
        return 0.0
    bends = [abs(medians[i - 1] - 2 * medians[i] + medians[i + 1]) for i in range(1, len(medians) - 1)]
    return sum(bends) / len(bends)


def _training_rise(level: _Level) -> Verdict | None:
    """Drops then rises, read from the training loss's window medians."""
    medians = level.medians
    lowest_index = min(range(len(medians)), key=medians.__getitem__)
    lowest, first, last = medians[lowest_index], medians[0], medians[-1]
    if lowest > first + math.log(DROP_RATIO) or lowest_index >= len(medians) - 2:
        return None
    if last - lowest <= max(math.log(1 + RISE_SHARE), RISE_SPREADS * level.median_noise(level.window)):
        return None
    step = (lowest_index + 1) * level.window
    return Verdict("overfitting", (
        f"Loss diagnosis: drops then rises: the training loss fell to {math.exp(lowest):.5f} (median of steps "
        f"{step - level.window + 1}-{step}, {math.exp(lowest - first):.2f}x the start; rule: < {DROP_RATIO:g}x) and "
        f"ended at {math.exp(last):.5f}, {math.exp(last - lowest):.2f}x that (rule: > {1 + RISE_SHARE:g}x and "
        f"{RISE_SPREADS:g} noise spreads) — overfitting, or a rate too high late in training: use a checkpoint from "
        "around that step (save_every), and hold out images (validation_share) to see it on unseen images."))


def _validation_rise(validation: dict[int, float], checkpoints: dict[int, str]) -> Verdict | None:
    """Drops then rises on the held-out loss: the checkpoint nearest its lowest point is the one to use."""
    finite = {step: loss for step, loss in validation.items() if math.isfinite(loss)}
    if len(finite) < 3:
        return None
    steps = sorted(finite)
    lowest = min(steps, key=lambda step: (finite[step], step))
    first, last = finite[steps[0]], finite[steps[-1]]
    if lowest == steps[-1] or last <= (1 + RISE_SHARE) * finite[lowest]:
        return None
    use = (f"use {checkpoints[min(checkpoints, key=lambda s: (abs(s - lowest), s))]}" if checkpoints
           else f"use a checkpoint from step {lowest} (turn on save_every)")
    return Verdict("overfitting", (
        f"Loss diagnosis: drops then rises: the validation loss went from {first:.5f} down to {finite[lowest]:.5f} "
        f"at step {lowest} and back up to {last:.5f} at step {steps[-1]}, {last / finite[lowest]:.2f}x its lowest "
        f"(rule: > {1 + RISE_SHARE:g}x) — overfitting after step {lowest}: {use}, or train fewer steps."))


def _spikes(logs: list[float], batch_files: Sequence[Sequence[str]]) -> Verdict | None:
    """Steps whose loss jumps far above the steps around them, with the files they trained on."""
    jumps = []
    for index, value in enumerate(logs):
        around = logs[max(0, index - SPIKE_NEIGHBOURS) : index] + logs[index + 1 : index + 1 + SPIKE_NEIGHBOURS]
        jumps.append(value - median(around))
    ordered = sorted(jumps)
    lower, upper = ordered[len(ordered) // 4], ordered[(3 * len(ordered)) // 4]
    fence = max(math.log(SPIKE_RATIO), upper + SPIKE_IQRS * (upper - lower))
    found = [(index + 1, math.exp(jump)) for index, jump in enumerate(jumps) if jump > fence]
    if not found:
        return None
    described = []
    for step, jump in found[:LISTED_SPIKES]:
        files = list(batch_files[step - 1]) if step - 1 < len(batch_files) else []
        names = ", ".join(files[:LISTED_FILES]) + (f" (+{len(files) - LISTED_FILES} more)"
                                                   if len(files) > LISTED_FILES else "")
        described.append(f"step {step} ({jump:.1f}x{': ' + names if names else ''})")
    more = f"; {len(found) - LISTED_SPIKES} more" if len(found) > LISTED_SPIKES else ""
    return Verdict("spikes", (
        f"Loss diagnosis: sudden spikes at {len(found)} step(s): loss above {math.exp(fence):.1f}x the median of "
        f"the {SPIKE_NEIGHBOURS} steps each side (rule: > {SPIKE_RATIO:g}x, and far out among this run's steps: "
        f"upper quartile + {SPIKE_IQRS:g} interquartile ranges) — {'; '.join(described)}{more}. Check those "
        "images and captions for corrupt or mislabelled files."))
