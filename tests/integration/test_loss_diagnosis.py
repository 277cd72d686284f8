"""The loss diagnosis on two real toy runs in a real ComfyUI server (#15 item 2).

Train LoRA trains the toy base on five green rings for 40 steps with a learning rate far too low
(1e-7: nothing moves) and one far too high (0.1: the LoRA breaks the model within a few steps and the
loss climbs from ~0.01 to ~1). Measured here (ComfyUI 0.3.75, CPU): the low run's last-20% median is
0.76x its first, within what its noise levels explain (rule > 0.17x): "flat"; the high run's is 5.2x:
"erratic". What a user sees: the verdict in Train LoRA's ``report`` output, and written under the loss
curve in an amber box.
"""

from __future__ import annotations

import pytest

from tests.helpers.training import colour_pixels, toy_runs
from tools.comfy_server import ComfyServer
from trainer_core.pictures.plots import VERDICT_OK_COLOUR, VERDICT_WARNING_COLOUR

RATES = {"too_low": 1e-7, "too_high": 0.1}


@pytest.fixture(scope="module")
def runs(comfy_server: ComfyServer) -> dict:
    return toy_runs(comfy_server, "diagnosis_rings", {
        name: dict(run_name=f"tests_diagnosis_{name}", steps=40, learning_rate=rate) for name, rate in RATES.items()})


def diagnosis(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith("Loss diagnosis: ")]


def test_a_learning_rate_far_too_low_reads_flat_and_says_to_raise_it(runs):
    print(runs["too_low"]["report"])  # shown with pytest -rP
    (verdict,) = diagnosis(runs["too_low"]["report"])
    assert verdict.startswith("Loss diagnosis: flat from the start: the median loss of the last 20% of steps is ")
    assert "(rule: > " in verdict and "try 3-10x higher" in verdict


def test_a_learning_rate_far_too_high_reads_erratic_and_says_to_lower_it(runs):
    print(runs["too_high"]["report"])
    (verdict,) = diagnosis(runs["too_high"]["report"])
    assert verdict.startswith("Loss diagnosis: erratic: ") and "try 3-10x lower" in verdict


def test_the_verdict_is_written_under_the_loss_curve_in_a_warning_box(runs):
    for name in RATES:
        warning = colour_pixels(runs[name]["curve"], VERDICT_WARNING_COLOUR, tolerance=3)
        ok = colour_pixels(runs[name]["curve"], VERDICT_OK_COLOUR, tolerance=3)
        print(f"{name}: {warning} amber pixels, {ok} green")
        assert warning > 2000 and ok == 0
