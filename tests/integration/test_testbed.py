"""The test bed itself: a real ComfyUI server that loads the tiny SD1.5 checkpoint and runs
stock graphs the way a user's canvas would. Only stock ComfyUI nodes are used here, so these
tests hold whatever state LoRA Lab's own nodes are in."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from tools.comfy_server import ComfyServer, PromptRejected
from tools.graph import txt2img_graph

pytestmark = pytest.mark.comfy

TINY_CKPT = "tiny_sd15.safetensors"
KSAMPLER, SAVE_IMAGE = "5", "7"

# Lines ComfyUI logs when a checkpoint is only partly understood.
LOAD_PROBLEMS = [
    "unet missing",
    "unet unexpected",
    "clip missing",
    "Missing VAE keys",
    "no CLIP/text encoder weights",
    "This is not a checkpoint file",
    "VAE not initalized",  # sic, ComfyUI's spelling
    "invalid value encountered",  # numpy, when NaN pixels are cast to uint8
]


def pixels(server: ComfyServer, result, node_id: str = SAVE_IMAGE) -> np.ndarray:
    [path] = server.output_files(result, node_id)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_tiny_checkpoint_loads_as_sd15_and_samples_the_requested_size(comfy_server: ComfyServer):
    loader = comfy_server.object_info("CheckpointLoaderSimple")["CheckpointLoaderSimple"]
    assert TINY_CKPT in loader["input"]["required"]["ckpt_name"][0]

    result = comfy_server.run(
        txt2img_graph(TINY_CKPT, "a red circle", width=64, height=48, filename_prefix="size")
    )

    result.raise_for_error()
    image = pixels(comfy_server, result)
    assert image.shape == (48, 64, 3)
    assert image.std() > 5, "a flat image would make every pixel comparison meaningless"
    assert set(result.node_seconds) >= {KSAMPLER, SAVE_IMAGE}
    assert [event.value for event in result.progress if event.node == KSAMPLER] == [1, 2]

    log = comfy_server.log_text()
    # ComfyUI names no model class in its log; these lines are what SD15 detection leads to:
    # the SD1 CLIP, the eps-prediction UNet, and the TAESD decoder inside the checkpoint.
    assert "Requested to load SD1ClipModel" in log
    assert "model_type EPS" in log
    assert "Requested to load TAESD" in log
    found = [problem for problem in LOAD_PROBLEMS if problem in log]
    assert not found, f"ComfyUI reported load problems: {found}"


def test_the_same_seed_gives_bit_identical_pixels(comfy_server: ComfyServer):
    first = comfy_server.run(txt2img_graph(TINY_CKPT, "a blue square", seed=7, filename_prefix="seed"))
    # ComfyUI would answer an identical graph from its cache; a doubled space tokenizes the
    # same but makes the text encoder, sampler and decoder run again.
    again = comfy_server.run(txt2img_graph(TINY_CKPT, "a blue  square", seed=7, filename_prefix="seed"))
    other_seed = comfy_server.run(txt2img_graph(TINY_CKPT, "a blue square", seed=8, filename_prefix="seed"))

    for result in (first, again, other_seed):
        result.raise_for_error()
    assert KSAMPLER in again.node_seconds and KSAMPLER not in again.cached_nodes
    assert np.array_equal(pixels(comfy_server, first), pixels(comfy_server, again))
    assert not np.array_equal(pixels(comfy_server, first), pixels(comfy_server, other_seed))


def test_a_graph_that_does_not_validate_is_rejected_with_the_node_and_reason(comfy_server: ComfyServer):
    graph = txt2img_graph("no_such_model.safetensors", "a cat")

    with pytest.raises(PromptRejected) as rejected:
        comfy_server.submit(graph)

    assert list(rejected.value.node_errors) == ["1"]
    assert "no_such_model.safetensors" in str(rejected.value)
    assert re.search(r"node 1 \(CheckpointLoaderSimple\)", str(rejected.value))


def test_an_unknown_node_type_is_rejected(comfy_server: ComfyServer):
    graph = txt2img_graph(TINY_CKPT, "a cat")
    graph.nodes["6"]["class_type"] = "NoSuchNode"

    with pytest.raises(PromptRejected, match="NoSuchNode"):
        comfy_server.submit(graph)


def test_the_server_survives_a_failing_prompt_and_runs_the_next(comfy_server: ComfyServer):
    # Passes validation (the file is listed) and fails while loading: a runtime error.
    (comfy_server.models_dir / "checkpoints" / "broken.safetensors").write_bytes(b"not a checkpoint")

    failed = comfy_server.run(txt2img_graph("broken.safetensors", "a cat", filename_prefix="broken"))
    after = comfy_server.run(txt2img_graph(TINY_CKPT, "a green triangle", filename_prefix="after"))

    assert failed.status == "error"
    assert failed.error_details["node_id"] == "1"
    assert "CheckpointLoaderSimple" in failed.error
    after.raise_for_error()
    assert pixels(comfy_server, after).shape == (64, 64, 3)


def test_a_running_prompt_can_be_interrupted(comfy_server: ComfyServer):
    graph = txt2img_graph(TINY_CKPT, "a long wait", steps=10_000, filename_prefix="interrupted")
    prompt_id = comfy_server.submit(graph)
    comfy_server.wait_for_event(prompt_id, "progress", timeout=60)

    comfy_server.interrupt()
    result = comfy_server.wait(prompt_id, timeout=60)

    assert result.status == "interrupted"
    assert SAVE_IMAGE not in result.outputs
