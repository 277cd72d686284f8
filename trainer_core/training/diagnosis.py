"""Reading a loss curve the way the guides teach ("Diagnosing from loss curves"), in numbers.

Diffusion loss is noisy by nature: every step draws its own noise level, so one step's loss says little.
Every rule here therefore compares medians of windows of steps, and measures movement against the
spread that random noise levels alone give (estimated from the run itself, robustly: the median absolute
deviation of each step from its window's median). Each verdict states its rule, its numbers and what to
do, for the ``report`` output and the loss image. Pure functions of numbers: no torch, no ComfyUI.

The rules, in the order they are tried (spikes are reported beside any of them):

- **drops then rises** (validation): the held-out loss's last measurement is above its lowest by more than
  ``RISE_SHARE``; use the checkpoint nearest the lowest.
- **erratic**: the windows' medians move up and down (around their steady trend) more than
  ``ERRATIC_MOVEMENT`` times what random noise levels explain, or the loss ends above ``RISING_RATIO``
  times where it began; the learning rate is likely too high.
- **drops then rises** (training loss, no validation): a window's median below ``DROP_RATIO`` of the first's,
  and the last window above it by more than ``RISE_SHARE`` and the noise.
- **flat from the start**: the median of the last ``WINDOW_SHARE`` of steps is above ``FLAT_RATIO`` times
  the first's; the learning rate is likely too low.
- **steadily decreasing**: otherwise.
- **sudden spikes**: a step's loss above ``SPIKE_RATIO`` times the median of the steps around it, and
  ``SPIKE_SPREADS`` noise spreads above it; the files in those steps' batches are named.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import median

MIN_STEPS = 10  # fewer steps than this say nothing about the curve's shape
WINDOW_SHARE = 0.2  # the first and last 20% of the steps are compared
WINDOWS = 10  # the curve's level: the medians of this many consecutive windows
MIN_WINDOW = 4  # steps, at least, in a window (fewer windows on short runs)
NOISE_MARGIN = 2.0  # a difference counts when above this many standard deviations of noise
FLAT_RATIO = 0.95  # last 20% median above this times the first 20% median: flat
RISING_RATIO = 1.25  # last 20% median above this times the first: the loss went up (rate too high)
ERRATIC_MOVEMENT = 2.5  # window medians move this many times what noise levels explain: erratic
DROP_RATIO = 0.9  # "drops": a window median at most this share of the first window's
RISE_SHARE = 0.05  # "rises": the end 5% above the lowest point (and above the noise)
RISE_SPREADS = 4.0  # ... by more than this many standard deviations of a window's median (the lowest is biased low)
SPIKE_RATIO = 4.0  # a step's loss above this times the median of the steps around it
SPIKE_SPREADS = 10.0  # ... and this many interquartile ranges above the upper quartile of all steps' ratios
SPIKE_NEIGHBOURS = 10  # steps each side that make a step's local median
LISTED_SPIKES = 5  # more spikes than this are counted, the first ones named
LISTED_FILES = 4  # files named per spike
MAD_TO_SIGMA = 1.4826  # the median absolute deviation of normal noise times this is its standard deviation


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
    values = [float(v) for v in losses if math.isfinite(v)]
    if len(values) < MIN_STEPS:
        return [Verdict("short", f"Loss diagnosis: {len(values)} steps are too few to read the curve's shape "
                                 f"(needs {MIN_STEPS}).")]
    verdicts = [_shape(values, dict(validation or {}), dict(checkpoints or {}))]
    spikes = _spikes(values, batch_files)
    if spikes is not None:
        verdicts.append(spikes)
    return verdicts


def diagnosis_lines(verdicts: Sequence[Verdict]) -> list[str]:
    """The verdicts as report lines."""
    return [verdict.text for verdict in verdicts]


@dataclass(frozen=True)
class _Level:
    """The curve's level: window medians, first/last 20% medians, and how noisy they are."""

    window: int  # steps per window
    medians: list[float]  # of consecutive windows
    first: float  # median of the first WINDOW_SHARE of steps
    last: float  # ... and of the last
    edge: int  # steps in each of those
    spread: float  # one step's noise around its window's median (robust standard deviation)

    def median_noise(self, count: int) -> float:
        """The standard deviation of the median of ``count`` noisy steps: ~1.25 sigma / sqrt(count)."""
        return 1.25 * self.spread / math.sqrt(count)


def _level(values: list[float]) -> _Level:
    window = max(MIN_WINDOW, len(values) // WINDOWS)
    chunks = [values[i : i + window] for i in range(0, window * (len(values) // window), window)]
    medians = [median(chunk) for chunk in chunks]
    deviations = [abs(v - m) for chunk, m in zip(chunks, medians, strict=True) for v in chunk]
    edge = max(MIN_WINDOW, round(len(values) * WINDOW_SHARE))
    return _Level(window, medians, median(values[:edge]), median(values[-edge:]), edge,
                  MAD_TO_SIGMA * median(deviations))


def _shape(values: list[float], validation: dict[int, float], checkpoints: dict[int, str]) -> Verdict:
    level = _level(values)
    ratio = level.last / level.first if level.first > 0 else 1.0
    share = f"{round(WINDOW_SHARE * 100)}%"
    overfit = _validation_rise(validation, checkpoints)
    if overfit is not None:
        return overfit
    movement = _movement(level)
    if movement > ERRATIC_MOVEMENT:
        return Verdict("erratic", (
            f"Loss diagnosis: erratic: the loss level (medians of {len(level.medians)} windows of {level.window} "
            f"steps) moves up and down {movement:.1f}x as much as random noise levels explain (rule: > "
            f"{ERRATIC_MOVEMENT:g}x) — the learning rate is likely too high; try 3-10x lower."))
    if ratio > RISING_RATIO:
        return Verdict("erratic", (
            f"Loss diagnosis: erratic: the median loss of the last {share} of steps is {ratio:.2f}x the first "
            f"{share}'s (rule: > {RISING_RATIO:g}x, the loss went up) — the learning rate is likely too high; "
            "try 3-10x lower."))
    rise = _training_rise(level)
    if rise is not None:
        return rise
    drop_noise = NOISE_MARGIN * math.sqrt(2) * level.median_noise(level.edge) / level.first if level.first > 0 else 0.0
    if ratio > min(FLAT_RATIO, 1 - drop_noise):
        return Verdict("flat", (
            f"Loss diagnosis: flat from the start: the median loss of the last {share} of steps is {ratio:.2f}x "
            f"the first {share}'s (rule: > {FLAT_RATIO:g}x, or a drop within the noise, here "
            f"> {1 - drop_noise:.2f}x) — the learning rate is likely too low; try 3-10x higher (or train longer)."))
    return Verdict("decreasing", (
        f"Loss diagnosis: steadily decreasing: the median loss of the last {share} of steps is {ratio:.2f}x the "
        f"first {share}'s (rule: <= {min(FLAT_RATIO, 1 - drop_noise):.2f}x) and its level moves up and down "
        f"{movement:.1f}x as much as random noise levels explain (rule: <= {ERRATIC_MOVEMENT:g}x) — training is "
        "going as it should."))


def _movement(level: _Level) -> float:
    """How much the window medians jump up and down (their second differences: zero on any steady or smoothly
    bending curve), over what noise alone gives them: |a - 2b + c| of three noisy medians averages
    sqrt(6) * sqrt(2/pi) ~= 1.95 times one median's standard deviation."""
    if len(level.medians) < 3 or level.spread <= 0:
        return 0.0
    medians = level.medians
    bends = [medians[i - 1] - 2 * medians[i] + medians[i + 1] for i in range(1, len(medians) - 1)]
    return sum(abs(bend) for bend in bends) / len(bends) / (1.95 * level.median_noise(level.window))


def _training_rise(level: _Level) -> Verdict | None:
    """Drops then rises, read from the training loss's window medians (when there is no validation)."""
    lowest_index = min(range(len(level.medians)), key=level.medians.__getitem__)
    lowest, first, last = level.medians[lowest_index], level.medians[0], level.medians[-1]
    if first <= 0 or lowest > DROP_RATIO * first or lowest_index >= len(level.medians) - 2:
        return None
    if last - lowest <= max(RISE_SHARE * lowest, RISE_SPREADS * level.median_noise(level.window)):
        return None
    step = (lowest_index + 1) * level.window
    return Verdict("overfitting", (
        f"Loss diagnosis: drops then rises: the training loss fell to {lowest:.5f} (median of steps "
        f"{step - level.window + 1}-{step}, {lowest / first:.2f}x the start; rule: < {DROP_RATIO:g}x) and ended "
        f"at {last:.5f}, {last / lowest:.2f}x that (rule: > {1 + RISE_SHARE:g}x and above the noise) — overfitting, "
        f"or a rate too high late in training: use a checkpoint from around step {step} (save_every), and hold "
        "out images (validation_share) to see it on unseen images."))


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


def _spikes(values: list[float], batch_files: Sequence[Sequence[str]]) -> Verdict | None:
    """Steps whose loss jumps far above the steps around them, with the files they trained on. A step's jump is
    its loss over the median of its neighbours; it is a spike when far out in this run's own distribution of
    jumps (noise levels make some jumps large in every run) and above ``SPIKE_RATIO``."""
    jumps = []
    for index in range(len(values)):
        around = values[max(0, index - SPIKE_NEIGHBOURS) : index] + values[index + 1 : index + 1 + SPIKE_NEIGHBOURS]
        local = median(around)
        jumps.append(values[index] / local if local > 0 else 0.0)
    ordered = sorted(jumps)
    lower, upper = ordered[len(ordered) // 4], ordered[(3 * len(ordered)) // 4]
    fence = max(SPIKE_RATIO, upper + SPIKE_SPREADS * (upper - lower))
    found = [(index + 1, jump) for index, jump in enumerate(jumps) if jump > fence]
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
        f"Loss diagnosis: sudden spikes at {len(found)} step(s): loss above {fence:.1f}x the median of the "
        f"{SPIKE_NEIGHBOURS} steps each side (rule: > {SPIKE_RATIO:g}x and > the upper quartile of this run's "
        f"ratios + {SPIKE_SPREADS:g} interquartile ranges) — {'; '.join(described)}{more}. Check those images "
        "and captions for corrupt or mislabelled files."))
