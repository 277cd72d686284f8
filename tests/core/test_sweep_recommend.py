"""The sweep's scores and its recommendation rule on synthetic tables (trainer_core.pictures.recommend)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from trainer_core.pictures.grids import MARK, labelled_grid
from trainer_core.pictures.plots import sweep_scores_image
from trainer_core.pictures.recommend import (
    BLEED_LIMIT,
    RowScores,
    latent_features,
    recommend_checkpoint,
    recommend_strength,
    recommendation_metadata,
    score_rows,
)

STRENGTHS = [0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def rows(concept, bleed=None, name="lora"):
    out = [RowScores(name, True, list(concept))]
    if bleed is not None:
        out.append(RowScores(name, False, list(bleed)))
    return out


def test_the_lowest_strength_reaching_most_of_the_gain_is_recommended():
    concept = [0, 0.2, 0.4, 0.6, 0.75, 0.85, 0.9, 0.92]  # 80% of 0.92 = 0.736: first reached at 0.7
    chosen = recommend_strength("lora", STRENGTHS, rows(concept, [0, 0.05, 0.1, 0.1, 0.15, 0.2, 0.3, 0.4]))
    assert chosen.strength == 0.7 and "80%" in chosen.reason


def test_strengths_that_bleed_too_much_are_passed_over():
    concept = [0, 0.6, 0.7, 0.85, 0.9, 0.92, 0.95, 1.0]
    bleed = [0, 0.6, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0]
    none = recommend_strength("lora", STRENGTHS, rows(concept, bleed))
    assert none.strength is None and "bleed is above" in none.reason
    bleed[1:3] = [0.2, 0.3]  # only 0.4 and 0.5 bleed little; neither reaches 80% of 1.0: the better of the two
    chosen = recommend_strength("lora", STRENGTHS, rows(concept, bleed))
    assert chosen.strength == 0.5 and "bleed too much" in chosen.reason
    assert math.isclose(chosen.at(chosen.bleed), 0.3)
    concept[1] = 0.8  # 0.4 now reaches 80% within the limit
    assert recommend_strength("lora", STRENGTHS, rows(concept, bleed)).strength == 0.4
    bleed[1] = BLEED_LIMIT + 0.01  # ... but not once it bleeds past the limit
    assert recommend_strength("lora", STRENGTHS, rows(concept, bleed)).strength == 0.5


def test_no_recommendation_when_the_lora_barely_moves_or_no_row_has_the_trigger():
    flat = recommend_strength("lora", STRENGTHS, rows([0, 0.01, 0.02, 0.03, 0.05, 0.06, 0.08, 0.1]))
    assert flat.strength is None and "train longer" in flat.reason
    untriggered = recommend_strength("lora", STRENGTHS, [RowScores("lora", False, [0.0] * 8)])
    assert untriggered.strength is None and "trigger" in untriggered.reason


def test_negative_strengths_and_the_baseline_are_never_recommended():
    strengths = [0.0, -0.5, 0.5, 1.0]
    chosen = recommend_strength("lora", strengths, rows([0, 0.9, 0.5, 0.6]))
    assert chosen.strength == 0.5  # 80% of 0.6 among positive strengths, -0.5 ignored though it scores 0.9


def test_scores_are_shares_of_the_way_from_the_baseline_to_the_dataset():
    reference = np.array([10.0, 0.0])
    # baseline 10 away; halfway; halfway with drift off the line (not likeness); at the dataset; past it
    trigger_row = np.array([[0.0, 0], [5.0, 0], [5.0, 4], [10.0, 0], [12.0, 0]])
    plain_row = np.array([[0.0, 5], [0.0, 5], [0.0, 5], [0.0, 5], [0.0, 0]])  # moved 5 of its 11.18 at the end
    scored = score_rows([trigger_row, plain_row], reference, 0, [("a", True), ("a", False)])
    assert scored[0].values == pytest.approx([0.0, 0.5, 0.5, 1.0, 1.2])
    assert scored[1].values == pytest.approx([0.0, 0.0, 0.0, 0.0, 5 / math.hypot(10, 5)])


def test_the_checkpoint_with_the_best_net_score_wins_and_near_ties_go_to_the_earlier():
    early = recommend_strength("step100", STRENGTHS, rows([0, .3, .5, .7, .8, .85, .9, .9], [0] + [0.1] * 7, "step100"))
    late = recommend_strength("step200", STRENGTHS, rows([0, .5, .7, .8, .9, .95, .97, 1.0], [0] + [0.1] * 7, "step200"))
    assert recommend_checkpoint([early, late]).checkpoint == "step200"
    close = recommend_strength("step200", STRENGTHS, rows([0, .3, .5, .7, .82, .86, .9, .92], [0] + [0.1] * 7, "step200"))
    assert recommend_checkpoint([early, close]).checkpoint == "step100"
    assert recommend_checkpoint([recommend_strength("x", STRENGTHS, rows([0.0] * 8))]) is None


def test_latent_features_tell_a_ring_from_a_disc_of_the_same_colours():
    yy, xx = np.mgrid[:16, :16]
    radius = np.hypot(yy - 7.5, xx - 7.5)

    def latent(shape):
        mask = (radius < 6) & ((radius > 4) if shape == "ring" else True)
        return np.stack([np.where(mask, 1.0, -1.0), np.where(mask, -0.5, 0.5)])

    ring, disc = latent_features(latent("ring")), latent_features(latent("disc"))
    shifted = latent_features(np.roll(latent("ring"), 3, axis=2))
    assert np.linalg.norm(ring - shifted) < 0.1 * np.linalg.norm(ring - disc)  # where the ring is does not matter


def test_the_metadata_keys_carry_the_strength_and_why():
    chosen = recommend_strength("lora", STRENGTHS, rows([0, .2, .4, .6, .75, .85, .9, .92], [0] + [0.1] * 7))
    keys = recommendation_metadata(chosen, "VAE latent (model-free)", None)
    assert keys["lora_lab_recommended_strength"] == "0.7"
    detail = json.loads(keys["lora_lab_recommendation"])
    assert detail["scorer"] == "VAE latent (model-free)" and detail["concept_score"] == 0.75


def test_the_plot_and_the_marked_grid():
    chosen = recommend_strength("lora", STRENGTHS, rows([0, .2, .4, .6, .75, .85, .9, .92], [0] + [0.1] * 7))
    plot = sweep_scores_image([("lora", STRENGTHS, chosen.concept, chosen.bleed, chosen.strength)], "scores")
    assert plot.shape == (320, 512, 3) and plot.dtype == np.float32 and plot.std() > 0.05
    cells = [[np.full((32, 32, 3), 0.5, np.float32) for _ in range(3)] for _ in range(2)]
    grid = (labelled_grid(cells, ["0", "0.5", "1"], ["a", "b"], marked=[(1, 2)]) * 255).round().astype(int)
    green = np.all(grid == MARK, axis=-1)
    ys, xs = np.nonzero(green)
    assert green.sum() > 4 * 32 and xs.min() > grid.shape[1] - 40 and ys.min() > grid.shape[0] // 2
