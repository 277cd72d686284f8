"""The headless runner (headless/train.py): a workflow saved from the canvas (UI or API format) or a TOML
config trains the toy in a subprocess, with ComfyUI imported as a library, to the same LoRA the canvas
gives; the loss log is written; the grid is rendered; bad input is refused before anything trains, in
one message that names the node or key and the fix.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from headless.ui_workflow import ui_to_api
from headless.workflow_files import read_workflow
from tests.helpers.headless_runs import run_headless, tiny_ui, write_json
from tests.helpers.toy import install_toy_workflow_inputs
from tests.helpers.workflows import load_api, load_ui, tiny_variant
from tools.comfy_server import ComfyServer

STEPS = 3
TINY_SWEEP = {"steps": 2, "strengths": "1.0", "include_baseline": False,
              "prompts": "{trigger}, a green ring on a red background"}


def tiny_training(run_name: str, filename: str) -> dict[str, dict]:
    """The shipped train_then_test workflow, STEPS steps at batch 2 and a one-cell grid."""
    return {"TrainLoRA": {"steps": STEPS, "batch_size": 2, "run_name": run_name},
            "SaveCheckpoint": {"filename": filename}, "TestLoRAStrengthSweep": dict(TINY_SWEEP)}


def loss_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def saved_path(server: ComfyServer, result, save_id: str) -> Path:
    """The file Save LoRA wrote in a canvas run (its node text says 'Saved <name>\\n<path>')."""
    text = result.outputs[save_id]["text"][0]
    return Path(text.splitlines()[1])


@pytest.fixture(scope="module")
def toy_server(comfy_server: ComfyServer) -> ComfyServer:
    install_toy_workflow_inputs(comfy_server)
    return comfy_server


def test_a_canvas_workflow_trains_headless_to_the_lora_the_canvas_trains(toy_server: ComfyServer, tmp_path: Path):
    info = toy_server.object_info()
    ui = tiny_ui(load_ui("train_then_test"), info, tiny_training("headless_ui", "headless_tests/ui"))
    api = ui_to_api(ui, info)
    (save_id,) = [key for key, node in api.items() if node["class_type"] == "SaveCheckpoint"]
    canvas = toy_server.run(api, timeout=600)
    assert canvas.ok, canvas.error
    canvas_file = saved_path(toy_server, canvas, save_id)

    workflow = write_json(tmp_path / "train_then_test.json", ui)
    # The server's thread count: the same arithmetic as the canvas run.
    done = run_headless(workflow, toy_server, tmp_path / "out", "--no-grid", threads=None)
    assert done.returncode == 0, done.stderr[-4000:]
    headless_file = tmp_path / "out" / "loras" / "headless_tests" / "ui.safetensors"
    assert str(headless_file) in done.stdout
    canvas_tensors, headless_tensors = load_file(str(canvas_file)), load_file(str(headless_file))
    assert sorted(canvas_tensors) == sorted(headless_tensors)
    different = [key for key in canvas_tensors if not torch.equal(canvas_tensors[key], headless_tensors[key])]
    assert not different, f"{len(different)} of {len(canvas_tensors)} tensors differ, e.g. {different[:3]}"
    with safe_open(str(headless_file), framework="pt") as handle:
        assert handle.metadata()["ss_steps"] == str(STEPS)

    # Both wrote the loss log beside their checkpoints, with the same losses.
    canvas_log = loss_rows(toy_server.models_dir / "loras" / "lora_lab_checkpoints" / "headless_ui_loss.csv")
    headless_log = loss_rows(tmp_path / "out" / "loras" / "lora_lab_checkpoints" / "headless_ui_loss.csv")
    assert [row["step"] for row in headless_log] == [str(step) for step in range(1, STEPS + 1)]
    assert headless_log == canvas_log
    assert not (tmp_path / "out" / "lora_lab").exists(), "--no-grid rendered a grid"


def test_an_api_workflow_trains_headless_with_its_grid_and_loss_log(toy_server: ComfyServer, tmp_path: Path):
    api = tiny_variant(load_api("train_then_test"), tiny_training("headless_api", "headless_tests/api"))
    # One of ComfyUI's comfy_extras nodes on the way (it sets the schedule Train LoRA trains with).
    api["20"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["1", 0], "sampling": "eps", "zsnr": False}}
    api["4"]["inputs"]["model"] = ["20", 0]
    done = run_headless(write_json(tmp_path / "api.json", api), toy_server, tmp_path / "out")
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "out" / "loras" / "headless_tests" / "api.safetensors").is_file()
    log = loss_rows(tmp_path / "out" / "loras" / "lora_lab_checkpoints" / "headless_api_loss.csv")
    assert [int(row["step"]) for row in log] == list(range(1, STEPS + 1))
    assert all(math.isfinite(float(row["loss"])) and float(row["loss"]) > 0 for row in log)
    assert all(float(row["learning_rate"]) > 0 for row in log)
    (grid,) = (tmp_path / "out" / "lora_lab" / "sweeps").glob("grid_*.png")
    assert f"grid: {grid}" in done.stdout
    assert "Loss diagnosis: " in done.stdout  # Train LoRA's report, printed as the canvas shows it
    from PIL import Image

    with Image.open(grid) as image:
        assert json.loads(image.info["lora_lab"])["strengths"] == [1.0]  # the workflow's own sweep settings
        assert json.loads(image.info["prompt"])  # the graph rides along, as in a canvas grid
    assert "Train LoRA" in done.stderr and "loss=" in done.stderr  # the console progress bar


def test_a_toml_config_trains_headless(toy_server: ComfyServer, tmp_path: Path):
    config = tmp_path / "rings.toml"
    config.write_text(
        'checkpoint = "toy_sd15.safetensors"\n'
        '[dataset]\nfolder = "lora_lab_toy_rings"\nresolution = 64\ntrigger_word = "sks"\n'
        '[train]\nsteps = 2\nrank = 4\nrun_name = "headless_toml"\n'
        "save_every = 1\n"  # a key of the Samples and Checkpoints node: it is added and wired in
        '[save]\nfilename = "headless_tests/toml"\n'
    )
    done = run_headless(config, toy_server, tmp_path / "out")
    assert done.returncode == 0, done.stderr[-4000:]
    tensors = load_file(str(tmp_path / "out" / "loras" / "headless_tests" / "toml.safetensors"))
    downs = [tensor for key, tensor in tensors.items() if key.endswith("lora_down.weight")]
    assert downs and all(tensor.shape[0] == 4 for tensor in downs)
    checkpoints = tmp_path / "out" / "loras" / "lora_lab_checkpoints"
    assert sorted(path.name for path in checkpoints.glob("headless_toml_step*.safetensors")) == [
        "headless_toml_step000001.safetensors", "headless_toml_step000002.safetensors"]
    assert len(loss_rows(checkpoints / "headless_toml_loss.csv")) == 2


def _no_train_lora(server: ComfyServer, tmp_path: Path) -> Path:
    return write_json(tmp_path / "test_existing_lora.json", load_ui("test_existing_lora"))


def _missing_checkpoint(server: ComfyServer, tmp_path: Path) -> Path:
    api = tiny_variant(load_api("train_then_test"), {"CheckpointLoaderSimple": {"ckpt_name": "not_here.safetensors"}})
    return write_json(tmp_path / "api.json", api)


def _missing_dataset(server: ComfyServer, tmp_path: Path) -> Path:
    api = tiny_variant(load_api("train_then_test"), {"LoadDataset": {"folder": "no_such_dataset"}})
    return write_json(tmp_path / "api.json", api)


def _unknown_toml_key(server: ComfyServer, tmp_path: Path) -> Path:
    config = tmp_path / "typo.toml"
    config.write_text('checkpoint = "toy_sd15.safetensors"\n[dataset]\nfolder = "lora_lab_toy_rings"\n'
                      "[train]\nstepz = 3\n")
    return config


BAD_INPUT = {
    "no Train LoRA": (_no_train_lora, ["test_existing_lora.json has no Train LoRA node", "add Train LoRA"]),
    "checkpoint not found": (_missing_checkpoint, ["Load Checkpoint", "'not_here.safetensors' is not in the "
                                                   "checkpoints folders", "models/checkpoints", "--models"]),
    "dataset folder missing": (_missing_dataset, ["Load Dataset", "'no_such_dataset' is not on this machine",
                                                  "input/no_such_dataset", "--input"]),
    "unknown TOML key": (_unknown_toml_key, ["typo.toml: [train] has no key 'stepz'", "Valid keys:", "steps,",
                                             "save_every"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_refused_before_training_with_one_message(toy_server: ComfyServer, tmp_path: Path, case: str):
    make, expected = BAD_INPUT[case]
    done = run_headless(make(toy_server, tmp_path), toy_server, tmp_path / "out")
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    message = done.stderr[done.stderr.index("LoRA Lab: "):]
    for words in expected:
        assert words in message, f"{words!r} not in: {message}"
    assert not list((tmp_path / "out").rglob("*.csv")), "training started"


def test_the_readme_toml_example_names_only_keys_that_exist(comfy_server: ComfyServer, tmp_path: Path):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (example,) = re.findall(r"```toml\n(.*?)```", readme, re.S)
    (tmp_path / "example.toml").write_text(example)
    api, _ = read_workflow(tmp_path / "example.toml", comfy_server.object_info())
    memory = api["train"]["inputs"]["memory_settings"]
    assert api[memory[0]]["inputs"]["gradient_checkpointing"] is True  # routed to its settings node
    assert api["grid"]["inputs"]["strengths"] == "0.6, 0.8, 1.0"
