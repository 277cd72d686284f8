"""A LoRA teaches the toy base model a shape it has never drawn, and the strength grid shows it.

The toy was pretrained on filled circles, squares, triangles and diamonds (tools/toy_scenes.py);
a ring is new to it. The shipped workflows/train_then_test.json (LoadDataset → TrainLoRA →
SaveCheckpoint → TestLoRAStrengthSweep) runs as it is on the toy and its ring dataset, and each
grid cell gets a ring score: how much of the convex hull of the concept-coloured pixels is not that
colour. Filled shapes score ≤ 0.02, the training rings ~0.42.

Colours: a green ring on red. The toy's VAE learned large flat areas; thin rings come back
faithfully only in some colours (measured round trip through its VAE: green on red keeps 98% of
the ring's pixels green, yellow on blue turns the ring red).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import ConvexHull

from tests.helpers.toy import install_toy_workflow_inputs
from tests.helpers.workflows import load_api
from tools.comfy_server import ComfyServer
from tools.toy_scenes import DEMO_CONCEPT, TOY_COLOURS, TOY_SHAPES, write_concept_dataset

CONCEPT = DEMO_CONCEPT  # a green ring on red, trigger "sks"
PROMPT_TEMPLATE = "{trigger}, a green ring on a red background"  # the shipped sweep's first row
STRENGTHS = (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # the sweep's baseline column, then 0.4 → 1.0
SEEDS = (0, 1, 2, 3)
# Thresholds on the mean ring score over the seeds, per strength column. Measured here (ComfyUI
# 0.3.75, torch 2.14.1 CPU, the one-run toy of 2026-11-24): 0.016 / 0.10 / 0.18 / 0.25 / 0.30 /
# 0.33 / 0.36 / 0.39 at 0 / 0.4 / 0.5 / ... / 1.0.
BASE_AT_MOST = 0.05  # strength 0 is the toy itself: a filled shape
VISIBLE_FROM_0_4 = 0.08  # the ring shows at 0.4 already
FULL_AT_LEAST = 0.25  # and clearly at 1.0
MONOTONE_SLACK = 0.05  # a higher strength never scores lower than this below a lower one


def ring_score(image: np.ndarray) -> float:
    """Share of the convex hull of the concept-coloured pixels (specks removed) that is not that
    colour: the hole of a ring, or the gap of a ring drawn open; about 0 for a filled shape."""
    names = list(TOY_COLOURS)
    palette = np.array([TOY_COLOURS[name] for name in names], dtype=float)
    nearest = ((image[..., None, :].astype(float) - palette) ** 2).sum(-1).argmin(-1)
    shape = ndimage.binary_opening(nearest == names.index(CONCEPT["colour"]), structure=np.ones((3, 3)))
    ys, xs = np.nonzero(shape)
    if len(xs) < 10:
        return 0.0
    points = np.stack([xs, ys], axis=1)
    outline = [(float(x), float(y)) for x, y in points[ConvexHull(points).vertices]]
    hull = Image.new("L", (image.shape[1], image.shape[0]), 0)
    ImageDraw.Draw(hull).polygon(outline, fill=255, outline=255)
    inside = np.asarray(hull) > 127
    return float((inside & ~shape).sum() / inside.sum())


@pytest.fixture(scope="module")
def ring_scores(comfy_server: ComfyServer) -> np.ndarray:
    """[seed, strength] ring scores of the sweep's first-row cells, from the shipped
    workflows/train_then_test.json run as it is, with copies of its sweep at more seeds."""
    server = comfy_server
    install_toy_workflow_inputs(server)
    api = copy.deepcopy(load_api("train_then_test"))
    (sweep_id,) = [key for key, node in api.items() if node["class_type"] == "TestLoRAStrengthSweep"]
    (trainer_id,) = [key for key, node in api.items() if node["class_type"] == "TrainLoRA"]
    sweep = api[sweep_id]["inputs"]
    assert sweep["prompts"].splitlines()[0] == PROMPT_TEMPLATE, "the shipped workflow's first prompt changed"
    strengths = [0.0] * bool(sweep["include_baseline"]) + [float(v) for v in sweep["strengths"].split(",")]
    assert tuple(strengths) == STRENGTHS, f"the shipped sweep's strengths changed: {strengths}"
    rows = len([line for line in sweep["prompts"].splitlines() if line.strip()])
    savers = []
    for seed in SEEDS:
        copy_id = sweep_id if seed == sweep["seed"] else f"seed{seed}"
        if copy_id != sweep_id:
            api[copy_id] = copy.deepcopy(api[sweep_id])
            api[copy_id]["inputs"]["seed"] = seed
        savers.append(f"cells{seed}")
        api[f"cells{seed}"] = {"class_type": "SaveImage",
                               "inputs": {"images": [copy_id, 1], "filename_prefix": f"toy_rings_{seed}"}}
    result = server.run(api, timeout=1800).raise_for_error()
    print(f"TrainLoRA {result.node_seconds.get(trainer_id, 0):.0f} s, whole graph {result.seconds:.0f} s")
    scores = []
    for saver in savers:
        paths = server.output_files(result, saver, "images")
        assert len(paths) == rows * len(STRENGTHS)
        row_scores = [ring_score(np.asarray(Image.open(path).convert("RGB"))) for path in paths]
        scores.append(row_scores[: len(STRENGTHS)])
        print("ring scores, every row:", np.round(row_scores, 2).reshape(rows, -1).tolist())
    return np.array(scores)


def test_the_training_rings_score_as_rings_and_filled_shapes_do_not(tmp_path):
    def scores(shape: str) -> list[float]:
        folder = write_concept_dataset(tmp_path / shape, count=4, **{**CONCEPT, "shape": shape})
        return [ring_score(np.asarray(Image.open(path).convert("RGB"))) for path in folder.glob("*.png")]

    assert min(scores("ring")) > 0.35
    assert max(max(scores(shape)) for shape in TOY_SHAPES) < 0.03


def test_the_new_shape_appears_in_the_strength_grid_and_grows_with_strength(ring_scores):
    means = ring_scores.mean(axis=0)
    report = (f"mean ring score per strength {dict(zip(STRENGTHS, means.round(3).tolist(), strict=True))}; "
              f"per seed {ring_scores.round(2).tolist()}")
    print(report)  # shown with pytest -rP
    assert means[0] <= BASE_AT_MOST, report
    assert means[1] >= VISIBLE_FROM_0_4, report
    assert means[-1] >= FULL_AT_LEAST, report
    assert all(later >= earlier - MONOTONE_SLACK for earlier, later in zip(means[1:], means[2:], strict=False)), report
