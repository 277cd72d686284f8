"""The concept score of benchmarks/efficacy.py (tools/shape_score.py) at its edges: nothing drawn scores 0,
the concept itself scores high in any colours, and the shapes the toy already draws score below 0."""

from __future__ import annotations

import numpy as np
import pytest

from tools.shape_score import CONCEPT_SHAPE, draw_picture, shape_score
from tools.toy_scenes import TOY_SHAPES, Scene


def picture(shape: str, colour: str = "green", background: str = "red", side: int = 50, centre=(32, 32)):
    return draw_picture(Scene(shape, colour, background, side, centre))


@pytest.mark.parametrize("grey", [0, 128, 255])
def test_a_blank_picture_scores_zero(grey):
    blank = np.full((64, 64, 3), grey, dtype=np.uint8)
    result = shape_score(blank)
    assert (result.concept_fit, result.known_fit, result.score) == (0.0, 0.0, 0.0)


def test_faint_noise_on_a_plain_background_scores_zero():
    noisy = np.clip(np.full((64, 64, 3), 120.0) + np.random.default_rng(0).normal(0, 8, (64, 64, 3)), 0, 255)
    assert shape_score(noisy.astype(np.uint8)).score == 0.0


@pytest.mark.parametrize(("colour", "background"), [("green", "red"), ("white", "black"), ("black", "yellow")])
def test_the_concept_itself_fits_its_template_and_no_known_shape(colour, background):
    result = shape_score(picture(CONCEPT_SHAPE, colour, background))
    assert result.concept_fit > 0.95
    assert result.score > 0.15, result


def test_the_score_does_not_depend_on_colour_or_place():
    scores = [shape_score(picture(CONCEPT_SHAPE, c, b, centre=centre)).score
              for c, b, centre in [("green", "red", (32, 32)), ("blue", "white", (30, 33)), ("yellow", "black", (34, 31))]]
    assert max(scores) - min(scores) < 0.03, scores


@pytest.mark.parametrize("shape", TOY_SHAPES)
def test_the_shapes_the_toy_already_draws_score_below_zero(shape):
    for side in (30, 44):
        result = shape_score(picture(shape, side=side))
        assert result.best_known == shape, result
        assert result.score < -0.05, result
