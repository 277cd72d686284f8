"""Pictures of a training run: the loss curve (raw and smoothed) with labelled axes, the validation
loss on held-out images beside it, and the loss diagnosis's verdicts written under it; and the strength
sweep's concept score and bleed against strength."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from ..smoothing import smooth

VALIDATION_COLOUR = "#d62728"  # the validation curve's red: apart from the loss's blues and the rate's orange
VERDICT_OK_COLOUR = "#dff0d8"  # the box behind a verdict that training went well (light green)
VERDICT_WARNING_COLOUR = "#fcebc6"  # ... and behind one that something went wrong (light amber)
VERDICT_LINE_PIXELS = 15  # height of a line of verdict text at 9 pt
VERDICT_WRAP_PIXELS = 6.2  # about one character of 9 pt text, to wrap the verdicts to the picture's width


class _Verdict(Protocol):  # trainer_core.training.diagnosis.Verdict, without importing the training room
    shape: str
    text: str


def loss_curve_image(
    losses: Sequence[float],
    learning_rates: Sequence[float] | None = None,
    checkpoints: Sequence[int] = (),
    title: str = "Training loss",
    size: tuple[int, int] = (768, 432),
    validation: Mapping[int, float] | None = None,
    best_step: int | None = None,
    verdicts: Sequence[_Verdict] = (),
) -> np.ndarray:
    """The loss per step (faint), its moving average (bold), optionally the learning rate on a second
    axis, vertical marks at checkpoint steps, and the validation loss per step (``validation``: red dots
    joined, the best checkpoint's ``best_step`` ringed). ``verdicts`` (the loss diagnosis) are written under
    the plot, each in a box: green for a run going well, amber for a problem; the picture grows taller by
    their lines. Returns an RGB float32 array in 0..1."""
    from matplotlib.figure import Figure

    dpi = 96
    wrapped = [textwrap.fill(verdict.text, width=max(40, int(size[0] / VERDICT_WRAP_PIXELS))) for verdict in verdicts]
    text_height = sum(VERDICT_LINE_PIXELS * (text.count("\n") + 1) + 10 for text in wrapped)
    height = size[1] + text_height
    figure = Figure(figsize=(size[0] / dpi, height / dpi), dpi=dpi)
    axes = figure.add_subplot(1, 1, 1)
    steps = np.arange(1, len(losses) + 1)
    if len(losses):
        axes.plot(steps, losses, color="#9db4d8", linewidth=0.8, label="loss")
        axes.plot(steps, smooth(losses), color="#1f4e9c", linewidth=2.0, label="smoothed")
        axes.set_xlim(1, max(2, len(losses)))
    for step in checkpoints:
        axes.axvline(step, color="#999999", linestyle=":", linewidth=1)
    if validation:
        steps_validated = sorted(validation)
        axes.plot(steps_validated, [validation[step] for step in steps_validated], color=VALIDATION_COLOUR,
                  linewidth=1.8, marker="o", markersize=5, label="validation")
        if best_step is not None and best_step in validation:
            axes.plot([best_step], [validation[best_step]], linestyle="none", marker="o", markersize=12,
                      markerfacecolor="none", markeredgecolor=VALIDATION_COLOUR, markeredgewidth=2,
                      label=f"best checkpoint (step {best_step})")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    final = f" (last {np.mean(losses[-max(1, len(losses) // 10):]):.4f})" if len(losses) else ""
    axes.set_title(title + final)
    axes.grid(True, alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    if learning_rates is not None and len(learning_rates) and len(set(learning_rates)) > 1:
        lr_axes = axes.twinx()
        lr_axes.plot(steps[: len(learning_rates)], learning_rates, color="#d0812b", linewidth=1.2, label="learning rate")
        lr_axes.set_ylabel("learning rate")
        more_handles, more_labels = lr_axes.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if handles:
        axes.legend(handles, labels, loc="upper right")
    figure.tight_layout(rect=(0, text_height / height, 1, 1))
    _draw_verdicts(figure, verdicts, wrapped, text_height, height)
    return _pixels(figure)


def _pixels(figure) -> np.ndarray:
    """A laid-out matplotlib figure as an RGB float32 array in 0..1."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return rgba[:, :, :3].astype(np.float32) / 255.0


def _draw_verdicts(figure, verdicts: Sequence[_Verdict], wrapped: list[str], top: int, height: int) -> None:
    """Each verdict's text in a coloured box, from ``top`` pixels above the picture's bottom down."""
    for verdict, text in zip(verdicts, wrapped, strict=True):
        colour = VERDICT_OK_COLOUR if verdict.shape == "decreasing" else VERDICT_WARNING_COLOUR
        figure.text(0.01, (top - 4) / height, text, fontsize=9, va="top", ha="left", family="DejaVu Sans",
                    bbox={"boxstyle": "square,pad=0.3", "facecolor": colour, "edgecolor": "none"})
        top -= VERDICT_LINE_PIXELS * (text.count("\n") + 1) + 10


SCORE_COLOURS = ("#1f4e9c", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def sweep_scores_image(curves: Sequence[tuple[str, Sequence[float], Sequence[float], Sequence[float], float | None]],
                       title: str, size: tuple[int, int] = (512, 320)) -> np.ndarray:
    """Concept score (solid) and bleed (dashed) against strength, one colour per LoRA file; ``curves`` holds
    (name, strengths, concept, bleed, recommended strength or None), NaNs are left out; the recommended
    strength is ringed. Returns an RGB float32 array in 0..1."""
    from matplotlib.figure import Figure

    dpi = 96
    figure = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    axes = figure.add_subplot(1, 1, 1)
    for index, (name, strengths, concept, bleed, chosen) in enumerate(curves):
        colour = SCORE_COLOURS[index % len(SCORE_COLOURS)]
        order = np.argsort(strengths)
        xs = np.asarray(strengths, dtype=float)[order]
        for values, style, what in ((concept, "-", "concept"), (bleed, "--", "bleed")):
            ys = np.asarray(values, dtype=float)[order]
            keep = ~np.isnan(ys)
            if keep.any():
                axes.plot(xs[keep], ys[keep], style, color=colour, marker="o", markersize=4, label=f"{what}: {name}")
        if chosen is not None:
            axes.axvline(chosen, color=colour, linestyle=":", linewidth=1.2)
            value = np.asarray(concept, dtype=float)[list(strengths).index(chosen)]
            axes.plot([chosen], [value], linestyle="none", marker="o", markersize=11, markerfacecolor="none",
                      markeredgecolor=colour, markeredgewidth=2, label=f"recommended {chosen:g}")
    axes.axhline(0, color="#999999", linewidth=0.8)
    axes.set_xlabel("LoRA strength")
    axes.set_ylabel("score (0 = baseline)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="upper left", fontsize=7)
    figure.tight_layout()
    return _pixels(figure)
