"""The loss diagnosis (#15 item 2) on synthetic curves of each shape the guides' table names.

Diffusion loss is noisy by nature, so every curve here carries noise like a real run's: multiplicative
and heavy-tailed (log-normal, spread 0.6 in log; the toy base's real loss spreads wider still). Each
verdict fires on its own shape and on none of the others, over several noise draws, and states its
rule and numbers."""

from __future__ import annotations

import numpy as np
import pytest

from trainer_core.pictures.plots import VERDICT_OK_COLOUR, VERDICT_WARNING_COLOUR, loss_curve_image
from trainer_core.training.diagnosis import Verdict, diagnose_losses

STEPS = 400
SEEDS = range(8)


def noisy(level: np.ndarray, seed: int, spread: float = 0.6) -> list[float]:
    return (level * np.random.default_rng(seed).lognormal(0.0, spread, len(level))).tolist()


def decreasing(seed: int) -> list[float]:
    t = np.linspace(0, 1, STEPS)
    return noisy(0.1 * (0.5 + 0.5 * np.exp(-4 * t)), seed)


def flat(seed: int) -> list[float]:
    return noisy(np.full(STEPS, 0.1), seed)


def drops_then_rises(seed: int) -> list[float]:
    t = np.linspace(0, 1, STEPS)
    return noisy(0.1 * (1 - 0.6 * np.sin(np.pi * t)), seed)


def erratic(seed: int) -> list[float]:
    """The level jumps to a new value every 20 steps (up to 5x up or down) and does not settle."""
    rng = np.random.default_rng(1000 + seed)
    levels = 0.1 * np.exp(rng.uniform(-1.6, 1.6, STEPS // 20))
    return noisy(np.repeat(levels, 20), seed)


def rising(seed: int) -> list[float]:
    """A rate so high that the LoRA breaks the model: the loss climbs to 10x and stays (the toy's lr 0.1)."""
    t = np.linspace(0, 1, STEPS)
    return noisy(0.1 * (1 + 9 * np.minimum(1, 4 * t)), seed)


SHAPES = {"decreasing": decreasing, "flat": flat, "overfitting": drops_then_rises, "erratic": erratic}


def shapes_of(verdicts: list[Verdict]) -> list[str]:
    return [verdict.shape for verdict in verdicts]


@pytest.mark.parametrize("expected", list(SHAPES))
def test_each_shape_reads_as_itself_and_as_no_other(expected):
    for seed in SEEDS:
        verdicts = diagnose_losses(SHAPES[expected](seed))
        assert shapes_of(verdicts) == [expected], (seed, verdicts)
        assert "(rule: " in verdicts[0].text


def test_a_noisy_steadily_decreasing_curve_is_not_called_erratic_even_with_wilder_noise():
    t = np.linspace(0, 1, STEPS)
    for seed in SEEDS:
        for spread in (0.3, 1.0, 1.5):  # up to the toy's own spread of log loss
            verdicts = diagnose_losses(noisy(0.1 * (0.4 + 0.6 * np.exp(-3 * t)), seed, spread))
            # At the widest spread a 2.5x drop over 400 steps can be within the noise: then it reads "flat".
            assert shapes_of(verdicts) == ["decreasing"] or (spread == 1.5 and shapes_of(verdicts) == ["flat"]), (
                seed, spread, verdicts)


def test_flat_and_erratic_say_which_way_to_move_the_learning_rate_with_their_numbers():
    (flat_verdict,) = diagnose_losses(flat(0))
    assert flat_verdict.text.startswith("Loss diagnosis: flat from the start: the median loss of the last 20% of steps")
    assert "(rule: > 0.81x: 0.95x, or less where noise levels move it more)" in flat_verdict.text
    assert "learning rate is likely too low; try 3-10x higher" in flat_verdict.text
    (erratic_verdict,) = diagnose_losses(erratic(0))
    assert "learning rate is likely too high; try 3-10x lower" in erratic_verdict.text
    assert "(rule: > 2x)" in erratic_verdict.text


def test_a_loss_that_climbs_and_stays_high_reads_erratic_too_but_a_flat_one_does_not():
    for seed in SEEDS:
        (verdict,) = diagnose_losses(rising(seed))
        assert verdict.shape == "erratic" and "the loss went up" in verdict.text, verdict


def test_drops_then_rises_uses_the_validation_loss_and_names_the_checkpoint_nearest_its_lowest():
    losses = decreasing(0)  # the training loss alone would say all is well
    validation = {100: 0.08, 200: 0.06, 300: 0.07, 400: 0.09}
    checkpoints = {100: "run_step000100.safetensors", 200: "run_step000200.safetensors",
                   300: "run_step000300.safetensors", 400: "run_step000400.safetensors"}
    (verdict,) = diagnose_losses(losses, validation, checkpoints)
    assert verdict.shape == "overfitting"
    assert "validation loss went from 0.08000 down to 0.06000 at step 200" in verdict.text
    assert "use run_step000200.safetensors" in verdict.text and "1.50x its lowest (rule: > 1.05x)" in verdict.text
    # A validation loss that keeps falling is no reason: the training curve is read as before.
    assert shapes_of(diagnose_losses(losses, {100: 0.08, 200: 0.07, 300: 0.06}, checkpoints)) == ["decreasing"]


def test_drops_then_rises_on_the_training_loss_alone_names_the_step_to_go_back_to():
    (verdict,) = diagnose_losses(drops_then_rises(0))
    assert verdict.text.startswith("Loss diagnosis: drops then rises: the training loss fell to")
    assert "use a checkpoint from around that step" in verdict.text


def test_sudden_spikes_name_the_files_of_those_steps_and_only_those():
    losses = decreasing(0)
    files = [(f"image_{step % 7}.png", f"image_{(step + 3) % 7}.png") for step in range(STEPS)]
    files[150] = ("broken.png", "image_1.png")
    files[300] = ("black.png", "image_2.png")
    losses[150] *= 200
    losses[300] *= 300
    verdicts = diagnose_losses(losses, batch_files=files)
    assert shapes_of(verdicts) == ["decreasing", "spikes"], verdicts
    text = verdicts[1].text
    assert "sudden spikes at 2 step(s)" in text
    assert "step 151 (" in text and "broken.png, image_1.png" in text and "step 301 (" in text and "black.png" in text
    for seed in SEEDS:  # heavy-tailed noise alone makes no spike
        for shape in SHAPES.values():
            assert "spikes" not in shapes_of(diagnose_losses(shape(seed))), seed


def test_too_few_steps_are_said_to_be_too_few():
    (verdict,) = diagnose_losses([0.1, 0.2, 0.1])
    assert verdict.shape == "short" and "3 steps are too few" in verdict.text


def test_the_verdicts_are_written_under_the_loss_curve_in_a_box_coloured_by_verdict():
    def pixels(image: np.ndarray, colour: str) -> int:
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(np.round(image * 255) - rgb).max(axis=-1) <= 2).sum())

    plain = loss_curve_image(flat(0))
    warned = loss_curve_image(flat(0), verdicts=diagnose_losses(flat(0)))
    well = loss_curve_image(decreasing(0), verdicts=diagnose_losses(decreasing(0)))
    assert warned.shape[0] > plain.shape[0] and warned.shape[1] == plain.shape[1]  # taller by the text
    assert pixels(warned, VERDICT_WARNING_COLOUR) > 2000 and pixels(warned, VERDICT_OK_COLOUR) == 0
    assert pixels(well, VERDICT_OK_COLOUR) > 2000 and pixels(well, VERDICT_WARNING_COLOUR) == 0
    assert pixels(plain, VERDICT_WARNING_COLOUR) == 0 and pixels(plain, VERDICT_OK_COLOUR) == 0
