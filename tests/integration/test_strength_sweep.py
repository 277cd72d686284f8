"""TestLoRAStrengthSweep in a real ComfyUI: train-then-test in one canvas, cells equal to LoraLoader +
KSampler, clear errors for files that are not LoRAs or do not fit the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.helpers.training import CKPT, checkpoint_and_dataset, make_ring_dataset
from tools.comfy_server import ComfyServer, PromptRejected
from tools.graph import Graph

PROMPTS = ["{trigger}, a yellow ring on a blue background", "a yellow ring"]
SAMPLING = dict(seed=5, steps=4, cfg=3.0, sampler_name="euler", scheduler="normal")
def sweep_node(server, graph, checkpoint, **inputs):
    values = server.widget_defaults("TestLoRAStrengthSweep")
    values.update(model=checkpoint[0], clip=checkpoint[1], vae=checkpoint[2], prompts="\n".join(PROMPTS),
                  strengths="0.5, 1.0", include_baseline=True, width=64, height=64, **SAMPLING)
    values.update(inputs)
    return graph.node("TestLoRAStrengthSweep", **values)


def stock_cell(graph, checkpoint, lora_name, strength, prompt, prefix):
    """The same cell the plain way: LoraLoader + CLIPTextEncode + KSampler + VAEDecode + SaveImage."""
    model, clip = checkpoint[0], checkpoint[1]
    if strength != 0:
        loader = graph.node("LoraLoader", model=model, clip=clip, lora_name=lora_name, strength_model=strength,
                            strength_clip=strength)
        model, clip = loader[0], loader[1]
    positive = graph.node("CLIPTextEncode", clip=clip, text=prompt)
    negative = graph.node("CLIPTextEncode", clip=clip, text="")
    latent = graph.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    sampled = graph.node("KSampler", model=model, positive=positive[0], negative=negative[0], latent_image=latent[0],
                         denoise=1.0, **SAMPLING)
    decoded = graph.node("VAEDecode", samples=sampled[0], vae=checkpoint[2])
    return graph.node("SaveImage", images=decoded[0], filename_prefix=prefix)


def read(server, result, node):
    return [np.asarray(Image.open(p).convert("RGB")) for p in server.output_files(result, node.id, "images")]


@pytest.fixture(scope="module")
def trained_and_swept(comfy_server: ComfyServer):
    server = comfy_server
    make_ring_dataset(server, "sweep_rings", count=6)
    graph = Graph()
    checkpoint, dataset = checkpoint_and_dataset(server, graph, "sweep_rings")
    train_inputs = server.widget_defaults("TrainLoRA")
    train_inputs.update(model=checkpoint[0], clip=checkpoint[1], vae=checkpoint[2], dataset=dataset[0],
                        trigger_word="sks", rank=4, alpha=4.0, learning_rate=1e-3, steps=40)
    trained = graph.node("TrainLoRA", **train_inputs)
    saved = graph.node("SaveCheckpoint", lora=trained[0], filename="tests/sweep_rings", if_exists="overwrite")
    sweep = sweep_node(server, graph, checkpoint, lora=saved[0])
    cells = graph.node("SaveImage", images=sweep[1], filename_prefix="sweep_cells")
    result = server.run(graph.to_api(), timeout=900).raise_for_error()
    return dict(server=server, result=result, sweep=sweep, cells=cells)


def test_train_then_test_in_one_canvas_gives_a_labelled_grid(trained_and_swept):
    server, result, sweep = trained_and_swept["server"], trained_and_swept["result"], trained_and_swept["sweep"]
    (grid_path,) = server.output_files(result, sweep.id, "images")
    grid = Image.open(grid_path)
    assert grid.width > 3 * 64 and grid.height > 2 * 64  # 3 columns (base, 0.5, 1.0) x 2 rows + labels
    info = json.loads(grid.info["lora_lab"])
    assert info["strengths"] == [0.0, 0.5, 1.0] and info["steps"] == "40" and len(info["lora_hash"]) == 64
    assert info["prompts"][0].startswith("sks, a yellow ring")
    assert "prompt" in grid.info, "the grid PNG carries the workflow that made it"
    cells = read(server, result, trained_and_swept["cells"])
    assert len(cells) == 6
    assert not np.array_equal(cells[0], cells[2]), "strength 1.0 looks like the baseline: the LoRA did nothing"


def test_every_cell_equals_a_plain_loraloader_and_ksampler_run(trained_and_swept):
    server = trained_and_swept["server"]
    cells = read(server, trained_and_swept["result"], trained_and_swept["cells"])
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
    stock = {}
    for row, prompt in enumerate(PROMPTS):
        for column, strength in enumerate((0.0, 0.5, 1.0)):
            text = prompt.replace("{trigger}", "sks")
            stock[(row, column)] = stock_cell(graph, checkpoint, "tests/sweep_rings.safetensors", strength, text,
                                              f"stock_{row}_{column}")
    result = server.run(graph.to_api()).raise_for_error()
    for (row, column), node in stock.items():
        (image,) = read(server, result, node)
        assert np.array_equal(image, cells[row * 3 + column]), f"cell row {row}, strength column {column} differs"


def test_a_file_that_is_not_a_lora_gives_a_clear_error(comfy_server: ComfyServer):
    server = comfy_server
    bad = server.models_dir / "loras" / "tests" / "broken.safetensors"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"\x00" * 100)
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
    sweep_node(server, graph, checkpoint, lora_name="tests/broken.safetensors")
    result = server.run(graph.to_api())
    assert not result.ok and "tests/broken.safetensors" in result.error and "broken or truncated" in result.error


@pytest.mark.parametrize("node", ["TestLoRAStrengthSweep", "CompareLoRAStack"])
def test_a_safetensors_file_that_holds_no_lora_is_refused_before_any_cell_is_drawn(comfy_server: ComfyServer, node):
    """A checkpoint picked as a LoRA by mistake is named as no LoRA (not '0/0 layers applied' over a rendered
    grid): the node stops before sampling, and the next job still runs."""
    server = comfy_server
    path = server.models_dir / "loras" / "tests" / "a_checkpoint.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
               "model.diffusion_model.out.2.bias": torch.zeros(4)}, str(path))
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
    if node == "TestLoRAStrengthSweep":
        grid = sweep_node(server, graph, checkpoint, lora_name="tests/a_checkpoint.safetensors")
    else:
        inputs = server.widget_defaults("CompareLoRAStack")
        inputs.update(model=checkpoint[0], clip=checkpoint[1], vae=checkpoint[2],
                      lora_name="tests/a_checkpoint.safetensors", steps=2, width=64, height=64)
        grid = graph.node("CompareLoRAStack", **inputs)
    graph.node("SaveImage", images=grid[0], filename_prefix="not_a_lora")
    result = server.run(graph.to_api())
    assert not result.ok
    assert "tests/a_checkpoint.safetensors is not a LoRA" in result.error and "a checkpoint" in result.error
    assert not [event for event in result.progress if event.node == grid.id], "cells were sampled"
    follow_up = Graph()
    follow_up.node("PreviewAny", source=follow_up.node("CheckpointLoaderSimple", ckpt_name=CKPT)[0])
    assert server.run(follow_up.to_api()).ok


def test_a_lora_for_another_model_family_renders_the_baseline_and_says_why(comfy_server: ComfyServer):
    server = comfy_server
    path = server.models_dir / "loras" / "tests" / "sdxl_like.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"  # SDXL layout, absent in SD1.5
    save_file({f"{stem}.lora_down.weight": torch.zeros(4, 2048), f"{stem}.lora_up.weight": torch.zeros(640, 4),
               f"{stem}.alpha": torch.tensor(4.0)}, str(path))
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
    sweep = sweep_node(server, graph, checkpoint, lora_name="tests/sdxl_like.safetensors", prompts="a ring")
    cells = graph.node("SaveImage", images=sweep[1], filename_prefix="family")
    result = server.run(graph.to_api()).raise_for_error()
    report = result.outputs[sweep.id]["text"][0]
    assert "does not fit this model" in report and "0/1" in report
    images = read(server, result, cells)
    assert images[0].std() > 0 and images[1].mean(axis=(0, 1)).argmax() == 0  # baseline renders; red error tiles


@pytest.mark.parametrize(
    "inputs, words",
    [
        ({"strengths": "0.5, abc"}, ["strengths", "abc"]),
        ({"strengths": "9"}, ["strengths", "out of range"]),
        ({"prompts": "  \n "}, ["prompts", "at least one prompt"]),
        ({"width": 8192, "height": 8192, "strengths": "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0"}, ["GiB", "smaller"]),
    ],
)
def test_bad_sweep_settings_name_the_field(comfy_server: ComfyServer, trained_and_swept, inputs, words):
    server = comfy_server
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
    sweep_node(server, graph, checkpoint, lora_name="tests/sweep_rings.safetensors", **inputs)
    try:
        result = server.run(graph.to_api())
        message = result.error or ""
        assert not result.ok
    except PromptRejected as rejected:
        message = json.dumps(rejected.node_errors) + str(rejected)
    for word in words:
        assert word in message, message


def test_stack_comparison_columns_equal_chained_loraloaders(comfy_server: ComfyServer, trained_and_swept):
    server = comfy_server
    other = server.models_dir / "loras" / "tests" / "other_style.safetensors"
    import shutil as _shutil

    _shutil.copyfile(server.models_dir / "loras" / "tests" / "sweep_rings.safetensors", other)
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
    values = server.widget_defaults("CompareLoRAStack")
    values.update(model=checkpoint[0], clip=checkpoint[1], vae=checkpoint[2], lora_name="tests/sweep_rings.safetensors",
                  other_loras="tests/other_style.safetensors: 0.6", prompts="{trigger}, a yellow ring", width=64,
                  height=64, **SAMPLING)
    stack = graph.node("CompareLoRAStack", **values)
    cells = graph.node("SaveImage", images=stack[1], filename_prefix="stack_cells")
    # The stack column the plain way: two chained LoraLoaders at the guides' 0.7 and 0.5.
    first = graph.node("LoraLoader", model=checkpoint[0], clip=checkpoint[1], lora_name="tests/sweep_rings.safetensors",
                       strength_model=0.7, strength_clip=0.7)
    second = graph.node("LoraLoader", model=first[0], clip=first[1], lora_name="tests/other_style.safetensors",
                        strength_model=0.5, strength_clip=0.5)
    positive = graph.node("CLIPTextEncode", clip=second[1], text="sks, a yellow ring")
    negative = graph.node("CLIPTextEncode", clip=second[1], text="")
    latent = graph.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    sampled = graph.node("KSampler", model=second[0], positive=positive[0], negative=negative[0],
                         latent_image=latent[0], denoise=1.0, **SAMPLING)
    decoded = graph.node("VAEDecode", samples=sampled[0], vae=checkpoint[2])
    plain = graph.node("SaveImage", images=decoded[0], filename_prefix="stack_plain")
    result = server.run(graph.to_api()).raise_for_error()
    images = read(server, result, cells)
    assert len(images) == 4  # base, new alone, other alone, stack
    info = json.loads(Image.open(server.output_files(result, stack.id, "images")[0]).info["lora_lab"])
    assert info["columns"][0] == "base" and info["columns"][3].startswith("stack: 0.7 + 0.5")
    assert np.array_equal(images[3], read(server, result, plain)[0])
    assert np.array_equal(images[1], images[1]) and not np.array_equal(images[0], images[3])


def test_checkpoint_by_strength_adds_a_row_per_checkpoint(comfy_server: ComfyServer, trained_and_swept):
    server = comfy_server
    folder = server.models_dir / "loras" / "lora_lab_checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    import shutil as _shutil

    for step in (10, 20):
        _shutil.copyfile(server.models_dir / "loras" / "tests" / "sweep_rings.safetensors",
                         folder / f"sweep_ckpt_step{step:06d}.safetensors")
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
    sweep = sweep_node(server, graph, checkpoint, lora_name="tests/sweep_rings.safetensors", prompts="a ring",
                       checkpoints="lora_lab_checkpoints/sweep_ckpt_step*")
    cells = graph.node("SaveImage", images=sweep[1], filename_prefix="ckpt_cells")
    result = server.run(graph.to_api()).raise_for_error()
    info = json.loads(Image.open(server.output_files(result, sweep.id, "images")[0]).info["lora_lab"])
    assert info["checkpoints"] == ["lora_lab_checkpoints/sweep_ckpt_step000010.safetensors",
                                   "lora_lab_checkpoints/sweep_ckpt_step000020.safetensors"]
    images = read(server, result, cells)
    assert len(images) == 3 * 3  # three LoRA files x (base, 0.5, 1.0)
    assert np.array_equal(images[2], images[5])  # same weights in another file: the same cell


def test_batched_prompts_match_separate_sampling_within_one_level(comfy_server: ComfyServer, trained_and_swept):
    server = comfy_server
    separate = read(server, trained_and_swept["result"], trained_and_swept["cells"])
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
    sweep = sweep_node(server, graph, checkpoint, lora_name="tests/sweep_rings.safetensors", batch_prompts=True)
    cells = graph.node("SaveImage", images=sweep[1], filename_prefix="batched_cells")
    batched = read(server, server.run(graph.to_api()).raise_for_error(), cells)
    assert len(batched) == len(separate) == 6
    for a, b in zip(batched, separate, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2  # same noise per image; rounding differs
    assert not np.array_equal(batched[0], batched[3])  # rows are different prompts
