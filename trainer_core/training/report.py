"""A training run in a few lines of text, for a person: Train LoRA's ``report`` output.

``run_report`` builds it from the ``TrainingResult`` alone (plus how to name a checkpoint file and notes the
front end adds), one line per topic; the loss diagnosis (``diagnosis.py``) adds its verdicts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .diagnosis import Verdict, diagnose_losses, diagnosis_lines
from .results import TrainingResult

LISTED_VALIDATIONS = 10  # more validations than this are summed up as first, lowest and last


def run_report(result: TrainingResult, checkpoint_name: Callable[[Path], str], notes: Sequence[str] = ()) -> str:
    """The summary: steps and time, the final loss, the validation losses and the best checkpoint's file
    (``checkpoint_name`` gives it as the user finds it, e.g. as LoraLoader lists it); ``notes`` follow."""
    lines = [f"Trained {result.steps} of {result.total_steps} steps in {result.seconds:.1f} s."]
    lines.append(_loss_line(result.losses))
    lines.append(_validation_line(result.validation_losses))
    if result.best_checkpoint is not None:
        step, path = result.best_checkpoint
        lines.append(f"Best checkpoint: {checkpoint_name(path)} (step {step}, validation loss "
                     f"{result.validation_losses[step]:.5f}).")
    lines.extend(diagnosis_lines(diagnose_run(result, checkpoint_name)))
    lines.extend(note for note in notes if note)
    return "\n".join(lines)


def diagnose_run(result: TrainingResult, checkpoint_name: Callable[[Path], str]) -> list[Verdict]:
    """The loss diagnosis of a run (``diagnosis.py``): its losses, validation, checkpoints and batch files."""
    checkpoints = {step: checkpoint_name(path)
                   for step, path in zip(result.checkpoint_steps(), result.checkpoints, strict=True)}
    return diagnose_losses(result.losses, result.validation_losses, checkpoints, result.batch_files)


def _loss_line(losses: Sequence[float]) -> str:
    if not losses:
        return "Training loss: no step finished."
    tail = max(1, len(losses) // 10)
    return (f"Final training loss {sum(losses[-tail:]) / tail:.5f} (mean of the last {tail} step(s); "
            f"first {tail}: {sum(losses[:tail]) / tail:.5f}).")


def _validation_line(losses: dict[int, float]) -> str:
    if not losses:
        return "Validation: off (set validation_share, or connect a dataset to validation_images)."
    steps = sorted(losses)
    if len(steps) <= LISTED_VALIDATIONS:
        listed = ", ".join(f"step {step} {losses[step]:.5f}" for step in steps)
        return f"Validation loss: {listed}."
    lowest = min(steps, key=lambda step: (losses[step], step))
    return (f"Validation loss ({len(steps)} measurements): first {losses[steps[0]]:.5f} at step {steps[0]}, "
            f"lowest {losses[lowest]:.5f} at step {lowest}, last {losses[steps[-1]]:.5f} at step {steps[-1]}.")
