"""Validation on held-out images through a real ComfyUI server, on the toy base (#13 item 4).

One prompt trains the same run three ways on five green rings: holding out a share (twice, under two run
names) and without validation. A second prompt trains on the four images the share left, without
validation and with the held-out image as a validation dataset of its own. What a user can check:
the same validation numbers on every run, a red validation curve on the loss image, the best
checkpoint named in the report and the file's metadata (a file LoraLoader lists), and a LoRA
bit-identical to one trained without validation on the same images, so held-out images were not
trained on and validating did not move what trained.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from tests.helpers.toy import install_toy_checkpoint
from tests.helpers.training import (
    colour_pixels,
    load_dataset_node,
    refusal_message,
    shown,
    toy_runs,
    train_and_show,
    train_node,
)
from tools.comfy_server import ComfyServer
from tools.graph import Graph
from tools.toy_scenes import DEMO_CONCEPT, write_concept_dataset
from trainer_core.pictures.plots import VALIDATION_COLOUR

STEPS, VALIDATE_EVERY, SAVE_EVERY = 20, 5, 10
FIVE, FOUR, HELD = "validation_five_rings", "validation_four_rings", "validation_held_out"
SETTINGS = dict(steps=STEPS, save_every=SAVE_EVERY, lora_dropout=0.1, learning_rate=2e-3)  # dropout: a random stream


def options(name: str, **changed) -> dict:
    """Train LoRA's options for the run ``name``: its LoRA saved as tests/<name>."""
    return dict(SETTINGS, run_name=f"tests_{name}", **changed)


def lora_file(server: ComfyServer, name: str) -> tuple[dict, dict]:
    path = server.models_dir / "loras" / name
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    return load_file(str(path)), metadata


def red_pixels(path) -> int:
    return colour_pixels(path, VALIDATION_COLOUR, tolerance=12)


@pytest.fixture(scope="module")
def runs(comfy_server: ComfyServer) -> dict:
    server = comfy_server
    shown_runs = toy_runs(server, FIVE, {
        "share": options("share", validation_share=0.2, validate_every=VALIDATE_EVERY),
        "share_again": options("share_again", validation_share=0.2, validate_every=VALIDATE_EVERY),
        "plain": options("plain"),
    }, save_as="tests/{name}")

    held_out = json.loads(lora_file(server, "tests/share.safetensors")[1]["lora_lab_validation_images"])
    for folder, names in ((FOUR, [p.name for p in (server.input_dir / FIVE).glob("*.png") if p.name not in held_out]),
                          (HELD, held_out)):
        shutil.rmtree(server.input_dir / folder, ignore_errors=True)
        (server.input_dir / folder).mkdir()
        for image in names:
            for source in (server.input_dir / FIVE / image, (server.input_dir / FIVE / image).with_suffix(".txt")):
                shutil.copy2(source, server.input_dir / folder / source.name)
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=install_toy_checkpoint(server))
    four = load_dataset_node(server, graph, FOUR)
    validation_images = load_dataset_node(server, graph, HELD)
    nodes = {
        "four": train_and_show(server, graph, checkpoint, four, "tests/four", **options("four")),
        "four_and_held": train_and_show(server, graph, checkpoint, four, "tests/four_and_held", **options(
            "four_and_held", validate_every=VALIDATE_EVERY, validation_images=validation_images[0])),
    }
    second = server.run(graph.to_api(), timeout=900).raise_for_error()
    shown_runs.update({name: shown(server, second, run_nodes) for name, run_nodes in nodes.items()})
    return {
        "server": server, "held_out": held_out,
        "report": {name: run["report"] for name, run in shown_runs.items()},
        "curve": {name: run["curve"] for name, run in shown_runs.items()},
        "lora": {name: lora_file(server, f"tests/{name}.safetensors") for name in shown_runs},
    }


def validation_losses(runs: dict, name: str) -> dict[str, float]:
    return json.loads(runs["lora"][name][1]["lora_lab_validation_losses"])


def test_validation_gives_the_same_numbers_on_two_runs(runs):
    losses = validation_losses(runs, "share")
    print("validation losses:", losses, "\n" + runs["report"]["share"])  # shown with pytest -rP
    assert list(losses) == ["5", "10", "15", "20"]  # every validate_every steps (the checkpoints among them)
    assert validation_losses(runs, "share_again") == losses
    # The same held-out image, from a folder of its own: the same noise, levels and weights, the same numbers.
    assert validation_losses(runs, "four_and_held") == losses
    assert len(set(losses.values())) == len(losses)  # they follow the LoRA as it trains


def test_held_out_images_are_not_trained_on_and_validation_leaves_the_lora_as_it_was(runs):
    assert len(runs["held_out"]) == 1  # 0.2 of 5 images
    tensors, metadata = runs["lora"]["share"]
    assert metadata["ss_num_train_images"] == "4" and metadata["ss_validation_split"] == "0.2"
    for other in ("four", "four_and_held"):
        other_tensors = runs["lora"][other][0]
        assert other_tensors.keys() == tensors.keys()
        assert all(np.array_equal(tensors[key].numpy(), other_tensors[key].numpy()) for key in tensors), other
    # Training on all five images (no validation) learns something else: the held-out one would have counted.
    plain = runs["lora"]["plain"][0]
    assert any(not np.array_equal(tensors[key].numpy(), plain[key].numpy()) for key in tensors)


def test_the_validation_curve_is_drawn_on_the_loss_image(runs):
    with_validation, without = red_pixels(runs["curve"]["share"]), red_pixels(runs["curve"]["plain"])
    print(f"validation-red pixels: {with_validation} with validation, {without} without")
    assert with_validation > 200 and without < 10


def test_the_best_checkpoint_is_named_in_the_report_and_the_metadata_and_loraloader_lists_it(runs):
    server = runs["server"]
    losses = validation_losses(runs, "share")
    metadata = runs["lora"]["share"][1]
    best = metadata["lora_lab_best_checkpoint"]
    step = int(metadata["lora_lab_best_checkpoint_step"])
    # Checkpoints are saved every 10 steps (and at the last): the best is the lowest of those.
    assert step in (10, 20) and losses[str(step)] == min(losses["10"], losses["20"])
    assert best == f"lora_lab_checkpoints/tests_share_step{step:06d}.safetensors"
    assert f"Best checkpoint: {best} (step {step}, validation loss" in runs["report"]["share"]
    assert "Validation loss: step 5 " in runs["report"]["share"]
    lora_names = server.object_info("LoraLoader")["LoraLoader"]["input"]["required"]["lora_name"][0]
    assert best in lora_names
    _, checkpoint_metadata = lora_file(server, best)
    assert float(checkpoint_metadata["ss_validation_loss"]) == pytest.approx(losses[str(step)], abs=1e-6)
    assert "Validation: off" in runs["report"]["plain"] and "lora_lab_best_checkpoint" not in runs["lora"]["plain"][1]


def refusal(server: ComfyServer, folder: str, validation_folder: str | None = None, **options) -> str:
    """Why Train LoRA on ``folder`` (with ``validation_folder`` as validation_images) refused to train."""
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=install_toy_checkpoint(server))
    dataset = load_dataset_node(server, graph, folder)
    if validation_folder is not None:
        options["validation_images"] = load_dataset_node(server, graph, validation_folder)[0]
    trainer = train_node(server, graph, checkpoint, dataset, steps=2, run_name="tests_refused", **options)
    graph.node("SaveCheckpoint", lora=trainer[0], filename="tests/refused", if_exists="overwrite")
    return refusal_message(server, graph, trainer)


def test_validation_settings_that_cannot_work_are_refused_with_the_field_and_the_fix(comfy_server: ComfyServer):
    server = comfy_server
    four, copy = server.input_dir / "validation_refused_four", server.input_dir / "validation_refused_copy"
    for folder in (four, copy):
        shutil.rmtree(folder, ignore_errors=True)
    write_concept_dataset(four, count=4, **DEMO_CONCEPT)
    copy.mkdir()
    for name in ("002.png", "002.txt"):  # a copy of a training image, in a folder of its own
        shutil.copy2(four / name, copy / name)

    message = refusal(server, four.name, validation_share=0.9)
    assert "validation_share (on the LoRA Lab Samples and Checkpoints node) 0.9 holds out 4 of the 4 image(s)" in message
    assert "lower validation_share to 0.75 or less" in message
    message = refusal(server, four.name, copy.name, validation_share=0.2)
    assert "validation_share (on the LoRA Lab Samples and Checkpoints node) is 0.2 and a dataset is connected to " \
           "Train LoRA's validation_images" in message and "Set validation_share to 0" in message
    message = refusal(server, four.name, copy.name)
    assert "validation_images: 1 of its 1 image(s) are also in the training dataset" in message
    assert "002.png, the same file as" in message
    assert not (server.models_dir / "loras" / "tests" / "refused.safetensors").exists()
