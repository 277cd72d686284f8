"""The scored sweep on the toy's ring LoRA, in a real ComfyUI: the shipped workflows/train_then_test.json
(its Load Dataset feeds the sweep) scores every cell against the ring dataset in the toy VAE's latent space,
recommends a strength, frames it, plots the scores and writes the recommendation into the saved file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.helpers.toy import install_toy_workflow_inputs
from tests.helpers.workflows import load_api
from tests.integration.test_toy_lora import PROMPT_TEMPLATE, STRENGTHS, VISIBLE_FROM_0_4, ring_score
from tools.comfy_server import ComfyServer
from tools.graph import Graph
from tools.toy_model import TOY_CKPT
from trainer_core.adapters.export import tensor_data_hash
from trainer_core.pictures.grids import MARK


@pytest.fixture(scope="module")
def toy_sweep(comfy_server: ComfyServer) -> dict:
    """The shipped workflow run as it is, plus a SaveImage of the sweep's cells and of its scores plot."""
    server = comfy_server
    install_toy_workflow_inputs(server)
    api = load_api("train_then_test")
    (sweep_id,) = [key for key, node in api.items() if node["class_type"] == "TestLoRAStrengthSweep"]
    sweep = api[sweep_id]["inputs"]
    assert sweep["prompts"].splitlines()[0] == PROMPT_TEMPLATE and "dataset" in sweep
    api["cells"] = {"class_type": "SaveImage", "inputs": {"images": [sweep_id, 1], "filename_prefix": "rec_cells"}}
    api["plot"] = {"class_type": "SaveImage", "inputs": {"images": [sweep_id, 3], "filename_prefix": "rec_plot"}}
    result = server.run(api, timeout=1800).raise_for_error()
    (grid_path,) = server.output_files(result, sweep_id, "images")
    grid = Image.open(grid_path)
    cells = [np.asarray(Image.open(p).convert("RGB")) for p in server.output_files(result, "cells", "images")]
    (saver_id,) = [key for key, node in api.items() if node["class_type"] == "SaveCheckpoint"]
    saved_name = result.outputs[saver_id]["text"][0].splitlines()[0].removeprefix("Saved ")
    info = json.loads(grid.info["lora_lab"])
    print("report:", result.outputs[sweep_id]["text"][0], sep="\n")
    return dict(server=server, result=result, grid=np.asarray(grid.convert("RGB")), info=info, cells=cells,
                report=result.outputs[sweep_id]["text"][0], plot=server.output_files(result, "plot", "images"),
                lora_file=server.models_dir / "loras" / saved_name, lora_name=saved_name)


def test_the_recommended_strength_shows_the_ring_in_the_trigger_row(toy_sweep):
    (recommendation,) = toy_sweep["info"]["recommendations"]
    strength = recommendation["strength"]
    assert toy_sweep["info"]["scorer"] == "VAE latent (model-free)"
    assert strength is not None and strength > 0, toy_sweep["report"]
    column = STRENGTHS.index(strength)
    trigger_row = toy_sweep["cells"][: len(STRENGTHS)]
    scores = [round(ring_score(cell), 3) for cell in trigger_row]
    assert scores[column] >= VISIBLE_FROM_0_4, f"recommended {strength}; ring scores {scores}"
    assert scores[0] < VISIBLE_FROM_0_4, f"the baseline already shows a ring: {scores}"
    assert f"recommended strength {strength:g}" in toy_sweep["report"]


def test_the_concept_score_separates_the_ring_from_the_baseline(toy_sweep):
    (recommendation,) = toy_sweep["info"]["recommendations"]
    concept = recommendation["concept"]
    assert concept[0] == 0 and concept[STRENGTHS.index(1.0)] >= 0.3, concept
    assert concept[STRENGTHS.index(1.0)] > concept[STRENGTHS.index(0.4)], concept


def test_bleed_rises_with_strength_in_the_row_without_the_trigger(toy_sweep):
    (recommendation,) = toy_sweep["info"]["recommendations"]
    bleed = recommendation["bleed"]
    assert bleed[0] == 0, bleed
    assert bleed[-1] > 2 * bleed[1] > 0, bleed  # strength 1.0 moves the plain prompt far more than 0.4
    assert all(later >= earlier - 0.05 for earlier, later in zip(bleed[1:], bleed[2:], strict=False)), bleed


def test_the_grid_frames_the_recommended_column_and_the_plot_comes_out(toy_sweep):
    grid = toy_sweep["grid"]
    green = np.all(grid == MARK, axis=-1)
    assert green.sum() >= 2 * 4 * 64, "no green frame around the recommended cells"
    (plot_path,) = toy_sweep["plot"]
    plot = Image.open(plot_path)
    assert plot.size == (512, 320) and np.asarray(plot.convert("L")).std() > 10


def test_the_recommendation_is_written_into_the_saved_file_which_still_loads(toy_sweep):
    server, path = toy_sweep["server"], toy_sweep["lora_file"]
    (recommendation,) = toy_sweep["info"]["recommendations"]
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["lora_lab_recommended_strength"] == f"{recommendation['strength']:g}"
    assert json.loads(metadata["lora_lab_recommendation"])["scorer"] == "VAE latent (model-free)"
    assert metadata["ss_trigger_word"] == "sks", "the training metadata was kept"
    assert tensor_data_hash(load_file(str(path))) == metadata["sshs_model_hash"], "the weights changed"
    assert not list(path.parent.glob(f".{path.name}.*")), "a temporary file was left behind"
    # LoraLoader reads the rewritten file: its cell at strength 1.0 is the sweep's own.
    sweep = load_api("train_then_test")
    inputs = next(n for n in sweep.values() if n["class_type"] == "TestLoRAStrengthSweep")["inputs"]
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=TOY_CKPT)
    loader = graph.node("LoraLoader", model=checkpoint[0], clip=checkpoint[1], lora_name=toy_sweep["lora_name"],
                        strength_model=1.0, strength_clip=1.0)
    positive = graph.node("CLIPTextEncode", clip=loader[1], text=PROMPT_TEMPLATE.replace("{trigger}", "sks"))
    negative = graph.node("CLIPTextEncode", clip=loader[1], text=inputs["negative"])
    latent = graph.node("EmptyLatentImage", width=inputs["width"], height=inputs["height"], batch_size=1)
    sampled = graph.node("KSampler", model=loader[0], positive=positive[0], negative=negative[0], latent_image=latent[0],
                         denoise=1.0, **{k: inputs[k] for k in ("seed", "steps", "cfg", "sampler_name", "scheduler")})
    saved = graph.node("SaveImage", images=graph.node("VAEDecode", samples=sampled[0], vae=checkpoint[2])[0],
                       filename_prefix="rec_loraloader")
    result = server.run(graph.to_api()).raise_for_error()
    (image,) = [np.asarray(Image.open(p).convert("RGB")) for p in server.output_files(result, saved.id, "images")]
    assert np.array_equal(image, toy_sweep["cells"][STRENGTHS.index(1.0)])


def test_a_checkpoint_by_strength_grid_marks_a_checkpoint(toy_sweep):
    """An 'early checkpoint' made from the trained file at a third of its weights (as if trained less) is
    swept beside it: the report names the recommended checkpoint, its rows are labelled, its cells framed."""
    server, path = toy_sweep["server"], toy_sweep["lora_file"]
    weak_name = "lora_lab_checkpoints/toy_rings_weak_step000050.safetensors"
    weak = server.models_dir / "loras" / weak_name
    weak.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v * (1 / 3) if "lora_up" in k else v for k, v in load_file(str(path)).items()}
    save_file(tensors, str(weak), metadata={"ss_steps": "50", "ss_trigger_word": "sks"})
    api = load_api("train_then_test")
    sweep_id = next(k for k, n in api.items() if n["class_type"] == "TestLoRAStrengthSweep")
    dataset_id = next(k for k, n in api.items() if n["class_type"] == "LoadDataset")
    checkpoint_id = next(k for k, n in api.items() if n["class_type"] == "CheckpointLoaderSimple")
    inputs = dict(api[sweep_id]["inputs"], lora_name=toy_sweep["lora_name"],
                  checkpoints="lora_lab_checkpoints/toy_rings_weak_step*", strengths="0.5, 1.0", steps=10)
    inputs.pop("lora")
    graph = {checkpoint_id: api[checkpoint_id], dataset_id: api[dataset_id],
             "sweep": {"class_type": "TestLoRAStrengthSweep", "inputs": inputs}}
    result = server.run(graph, timeout=1800).raise_for_error()
    grid = Image.open(server.output_files(result, "sweep", "images")[0])
    info = json.loads(grid.info["lora_lab"])
    report = result.outputs["sweep"]["text"][0]
    print(report)
    chosen = info["recommended_checkpoint"]
    assert chosen in (toy_sweep["lora_name"], weak_name), report
    assert [r["lora"] for r in info["recommendations"]] == [weak_name, toy_sweep["lora_name"]], "not in step order"
    assert f"recommended checkpoint: {chosen}" in report
    green = np.all(np.asarray(grid.convert("RGB")) == MARK, axis=-1)
    assert green.sum() >= 2 * 4 * 64, "the recommended cells are not framed"
