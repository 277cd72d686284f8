"""The shipped workflows (workflows/): every API graph runs in a real ComfyUI on the tiny model,
every UI file is valid against the server's /object_info and converts to its API twin, and the
files are what tools/make_workflows.py writes from the current node definitions."""

from __future__ import annotations

import copy
import shutil

import pytest
import requests
from PIL import Image

from tests.helpers.workflows import (
    TINY_OTHER_LORA,
    TINY_OVERRIDES,
    TINY_SAVED_LORA,
    api_workflow_names,
    load_api,
    load_ui,
    make_tiny_dataset,
    make_tiny_tagger,
    make_uncaptioned_dataset,
    node_id,
    tiny_variant,
    ui_problems,
    workflow_names,
)
from tools.comfy_server import PACK_LINK_NAME, ComfyServer
from tools.make_workflows import WORKFLOWS_DIR, workflow_files
from tools.workflow_format import ui_to_api

UI_WORKFLOWS = workflow_names()


@pytest.fixture(scope="module")
def object_info(comfy_server: ComfyServer) -> dict:
    comfy_server.require_nodes("LoadDataset", "TrainLoRA", "SaveCheckpoint", "TestLoRAStrengthSweep")
    return comfy_server.object_info()


def test_every_workflow_ships_in_both_formats_and_runs_in_a_test():
    assert UI_WORKFLOWS, "no workflows in workflows/"
    assert UI_WORKFLOWS == api_workflow_names()
    assert sorted(TINY_OVERRIDES) == UI_WORKFLOWS, (
        "each workflow needs its tiny-model values (TINY_OVERRIDES)"
    )


def test_the_files_are_what_make_workflows_writes_from_the_current_nodes(object_info):
    expected = workflow_files(object_info)
    stale = [
        str(path.relative_to(WORKFLOWS_DIR))
        for path, text in expected.items()
        if not path.is_file() or path.read_text() != text
    ]
    assert not stale, f"out of date with the node definitions: {stale}; run python tools/make_workflows.py"
    shipped = set(WORKFLOWS_DIR.glob("*.json")) | set(WORKFLOWS_DIR.glob("api/*.json"))
    assert shipped == set(expected), "workflows/ holds files tools/make_workflows.py does not write"


def test_comfyui_offers_the_ui_workflows_as_the_packs_templates(comfy_server: ComfyServer):
    """ComfyUI lists a custom node's workflows/ folder in its template browser (the API files in
    workflows/api/ are not listed: they are not canvas workflows)."""
    session = requests.Session()
    session.trust_env = False
    templates = session.get(f"{comfy_server.url}/api/workflow_templates", timeout=30).json()
    assert sorted(templates.get(PACK_LINK_NAME, [])) == UI_WORKFLOWS


@pytest.mark.parametrize("name", UI_WORKFLOWS)
def test_ui_nodes_widgets_and_links_are_valid_against_object_info(name, object_info):
    problems = ui_problems(load_ui(name), object_info)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", UI_WORKFLOWS)
def test_ui_workflow_converts_to_the_shipped_api_graph(name, object_info):
    assert ui_to_api(load_ui(name), object_info) == load_api(name)


def test_the_ui_check_finds_shifted_widgets_wrong_links_and_unknown_nodes(object_info):
    ui = load_ui("train_then_test_sd15")
    sweep = next(node for node in ui["nodes"] if node["type"] == "TestLoRAStrengthSweep")
    shifted = copy.deepcopy(ui)
    next(n for n in shifted["nodes"] if n["id"] == sweep["id"])["widgets_values"].pop(0)
    assert any("TestLoRAStrengthSweep" in problem for problem in ui_problems(shifted, object_info))

    wrong_link = copy.deepcopy(ui)
    model_link = next(link for link in wrong_link["links"] if link[3] == sweep["id"] and link[5] == "MODEL")
    model_link[2], model_link[5] = 1, "CLIP"  # the checkpoint's CLIP into the sweep's model input
    assert any(
        "CLIP into TestLoRAStrengthSweep.model" in problem for problem in ui_problems(wrong_link, object_info)
    )

    unknown = copy.deepcopy(ui)
    unknown["nodes"][0]["type"] = "NoSuchNode"
    assert any("not registered" in problem for problem in ui_problems(unknown, object_info))


@pytest.fixture(scope="module")
def train_then_test_run(comfy_server: ComfyServer):
    make_tiny_dataset(comfy_server.input_dir)
    api = tiny_variant(load_api("train_then_test_sd15"), TINY_OVERRIDES["train_then_test_sd15"])
    return api, comfy_server.run(api, timeout=300).raise_for_error()


def test_train_then_test_runs_on_the_tiny_model(comfy_server: ComfyServer, train_then_test_run):
    api, result = train_then_test_run
    (grid_path,) = comfy_server.output_files(result, node_id(api, "Strength grid"))
    grid = Image.open(grid_path)
    assert grid.width > 3 * 64 and grid.height > 64  # baseline, 0.5 and 1.0 for one prompt, with labels
    (sweep_grid,) = comfy_server.output_files(result, node_id(api, "Test LoRA Strength Sweep"))
    assert sweep_grid.name.startswith("grid") and sweep_grid.is_file()
    (curve,) = comfy_server.output_files(result, node_id(api, "Loss curve"))
    assert Image.open(curve).width > 200
    assert (comfy_server.models_dir / "loras" / f"{TINY_SAVED_LORA}.safetensors").is_file()
    report = result.outputs[node_id(api, "Dataset report")]["text"][0]
    assert "4 images" in report


def test_the_existing_lora_workflow_runs_on_the_tiny_model(comfy_server: ComfyServer, train_then_test_run):
    api = tiny_variant(load_api("test_existing_lora"), TINY_OVERRIDES["test_existing_lora"])
    result = comfy_server.run(api, timeout=300).raise_for_error()
    (grid_path,) = comfy_server.output_files(result, node_id(api, "Strength grid"))
    assert Image.open(grid_path).width > 3 * 64
    report = result.outputs[node_id(api, "Test a saved LoRA (pick it in lora_name)")]["text"][0]
    assert f"{TINY_SAVED_LORA}.safetensors" in report and "layers applied" in report


def test_the_stacked_comparison_workflow_runs_on_the_tiny_model(
    comfy_server: ComfyServer, train_then_test_run
):
    loras = comfy_server.models_dir / "loras"
    shutil.copyfile(loras / f"{TINY_SAVED_LORA}.safetensors", loras / f"{TINY_OTHER_LORA}.safetensors")
    api = tiny_variant(load_api("stacked_comparison"), TINY_OVERRIDES["stacked_comparison"])
    result = comfy_server.run(api, timeout=300).raise_for_error()
    (grid_path,) = comfy_server.output_files(result, node_id(api, "Stack grid"))
    assert Image.open(grid_path).width > 4 * 64  # base, the new LoRA, the other one, the stack


def test_the_caption_only_workflow_writes_captions_next_to_the_images(comfy_server: ComfyServer):
    pytest.importorskip(
        "onnxruntime", reason="Auto Caption's WD14 taggers need onnxruntime (requirements.txt)"
    )
    make_tiny_tagger(comfy_server.models_dir)
    folder = make_uncaptioned_dataset(comfy_server.input_dir)
    api = tiny_variant(load_api("caption_only"), TINY_OVERRIDES["caption_only"])
    result = comfy_server.run(api, timeout=300).raise_for_error()
    text = result.outputs[node_id(api, "Auto Caption (writes .txt files next to the images)")]["text"][0]
    assert "Captioned 3 of 3 images" in text and "Wrote 3 caption files" in text
    assert sorted(path.name for path in folder.glob("*.txt")) == ["blue.txt", "green.txt", "red.txt"]
