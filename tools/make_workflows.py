"""Write the shipped workflows: the API graphs defined here, the UI files derived from them and
the node definitions of a real ComfyUI (``/object_info``), so both stay in step with the nodes.

    python tools/make_workflows.py             # start a ComfyUI on a loopback port, write workflows/
    python tools/make_workflows.py --check     # exit 1 if a committed file differs from what it would write
    python tools/make_workflows.py --url http://127.0.0.1:8188    # use a running ComfyUI instead

Writes ``workflows/<name>.json`` (UI format: drag and drop into the canvas) and
``workflows/api/<name>.json`` (API format: ``POST /prompt``, the tests, the headless runner).
``train_then_test`` runs as it is on the toy base model (``python tools/toy_model.py --install
<ComfyUI>`` puts the toy and its ring dataset in place); the others have values for a real user
(SD1.5 at 512 px, the guides' training defaults), which the tests override where the tiny test
model needs it. Every widget input is named in the API files: the values
not set here are the nodes' defaults at generation time. A Train LoRA setting that lives on a settings
node (tools/train_graph.py) brings that node into the workflow when its value is not the default.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.graph import Graph, NodeHandle
from tools.toy_model import TOY_CKPT
from tools.toy_scenes import DEMO_CONCEPT, DEMO_DATASET
from tools.train_graph import add_train_lora
from tools.workflow_format import api_to_ui, default_inputs, display_name, estimate_size, input_specs

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = REPO_ROOT / "workflows"

CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"  # the name ComfyUI's default workflow uses
DATASET_FOLDER = "my_dataset"
TRIGGER_WORD = "ohwx"
TAGGER = "wd-vit-tagger-v3"  # SmilingWolf's WD14 tagger, as a folder in models/captioners
SAVED_LORA = "lora_lab/my_lora"  # Save LoRA's default name; test_existing_lora loads that file
SWEEP_PROMPTS = (
    "{trigger}, a photo\n{trigger}, a painting\na photo"  # the last row shows what leaks without the trigger
)
SWEEP_NEGATIVE = "blurry, low quality"
OTHER_LORAS = "my_style_lora.safetensors: 0.8"  # an example line: the user's own LoRAs replace it
# The toy's train-then-test: settings measured to teach it the ring in a few minutes on a CPU
# (tests/integration/test_toy_lora.py scores the grid this workflow draws).
TOY_TRIGGER = DEMO_CONCEPT["trigger_word"]
TOY_TRAINING = {
    "rank": 8,
    "alpha": 8.0,
    "learning_rate": 5e-4,
    "steps": 200,
    "batch_size": 4,
    "target_layers": "all_linear",
}
TOY_SAVED_LORA = "lora_lab/toy_rings"
TOY_SWEEP = {
    "width": 64,
    "height": 64,
    "steps": 20,
    "cfg": 5.0,
    "sampler_name": "euler",
    "scheduler": "normal",
    # The second row has no trigger word: what the LoRA leaks into prompts that do not ask for it.
    "prompts": "{trigger}, a green ring on a red background\na green circle on a red background",
    "negative": "",
}
LOSS_CURVE_SIZE = [400, 280]
GRID_PREVIEW_SIZE = [560, 520]
SWEEP_SIZE = [400, 860]  # room for the grid it shows below its widgets
LIVE_CHART_ROOM = [340, 230]  # Train LoRA's live chart (web/lora_lab_live.js): its least width, the height it adds


class WorkflowBuilder:
    """A Graph whose nodes get every widget default from /object_info, a title, and optional sizes."""

    def __init__(self, object_info: dict[str, Any]):
        self.object_info = object_info
        self.graph = Graph()
        self.sizes: dict[str, list[int]] = {}

    def node(
        self, class_type: str, title: str | None = None, size: list[int] | None = None, **inputs: Any
    ) -> NodeHandle:
        if class_type not in self.object_info:
            raise KeyError(f"{class_type} is not registered in this ComfyUI (is the pack installed?)")
        info = self.object_info[class_type]
        values = {**default_inputs(info), **inputs}
        # In the node's own input order, as the frontend's "Export (API)" writes them.
        ordered = {spec.name: values[spec.name] for spec in input_specs(info) if spec.name in values}
        handle = self.graph.node(
            class_type, **ordered, **{k: v for k, v in values.items() if k not in ordered}
        )
        self.graph.nodes[handle.id]["_meta"] = {"title": title or display_name(info)}
        if size:
            self.sizes[handle.id] = size
        return handle


def _train_then_test(
    object_info: dict[str, Any],
    checkpoint_title: str,
    checkpoint_name: str,
    dataset_inputs: dict[str, Any],
    training: dict[str, Any],
    saved_lora: str,
    sweep_inputs: dict[str, Any],
) -> WorkflowBuilder:
    """The whole chain in one canvas: checkpoint and dataset -> Train LoRA -> Save LoRA -> sweep."""
    flow = WorkflowBuilder(object_info)
    checkpoint = flow.node("CheckpointLoaderSimple", checkpoint_title, ckpt_name=checkpoint_name)
    dataset = flow.node("LoadDataset", "Load Dataset (a folder in ComfyUI/input)", **dataset_inputs)
    trained = add_train_lora(
        flow.node,
        object_info,
        model=checkpoint[0],
        clip=checkpoint[1],
        vae=checkpoint[2],
        dataset=dataset[0],
        **training,
    )
    width, height = estimate_size(object_info["TrainLoRA"])  # and room below for its live chart
    flow.sizes[trained.id] = [max(width, LIVE_CHART_ROOM[0]), height + LIVE_CHART_ROOM[1]]
    saved = flow.node("SaveCheckpoint", "Save LoRA (into models/loras)", lora=trained[0], filename=saved_lora)
    sweep = flow.node(
        "TestLoRAStrengthSweep",
        size=SWEEP_SIZE,
        model=checkpoint[0],
        clip=checkpoint[1],
        vae=checkpoint[2],
        lora=saved[0],
        dataset=dataset[0],
        **sweep_inputs,
    )
    flow.node("PreviewAny", "Dataset report", source=dataset[1])
    flow.node("PreviewImage", "Loss curve", size=LOSS_CURVE_SIZE, images=trained[2])
    flow.node("PreviewImage", "Strength grid", size=GRID_PREVIEW_SIZE, images=sweep[0])
    flow.node("PreviewImage", "Scores and recommended strength", size=LOSS_CURVE_SIZE, images=sweep[3])
    return flow


def train_then_test_workflow(object_info: dict[str, Any]) -> WorkflowBuilder:
    """On the toy base model, as shipped: teach it a green ring (trigger "sks") and sweep it."""
    return _train_then_test(
        object_info,
        "Load Checkpoint (the toy: tools/toy_model.py --install)",
        TOY_CKPT,
        {"folder": DEMO_DATASET, "resolution": 64, "bucket_step": 64, "trigger_word": TOY_TRIGGER},
        TOY_TRAINING,
        TOY_SAVED_LORA,
        TOY_SWEEP,
    )


def train_then_test_sd15_workflow(object_info: dict[str, Any]) -> WorkflowBuilder:
    """The same chain for your own SD1.5 checkpoint and dataset, with the guides' defaults."""
    return _train_then_test(
        object_info,
        "Load Checkpoint (SD1.5)",
        CHECKPOINT,
        {"folder": DATASET_FOLDER, "trigger_word": TRIGGER_WORD},
        {},
        SAVED_LORA,
        {"prompts": SWEEP_PROMPTS, "negative": SWEEP_NEGATIVE},
    )


def existing_lora_workflow(object_info: dict[str, Any]) -> WorkflowBuilder:
    """A LoRA file from models/loras through the strength sweep (default: what train_then_test saved)."""
    flow = WorkflowBuilder(object_info)
    checkpoint = flow.node("CheckpointLoaderSimple", "Load Checkpoint (SD1.5)", ckpt_name=CHECKPOINT)
    sweep = flow.node(
        "TestLoRAStrengthSweep",
        "Test a saved LoRA (pick it in lora_name)",
        size=SWEEP_SIZE,
        model=checkpoint[0],
        clip=checkpoint[1],
        vae=checkpoint[2],
        lora_name=f"{SAVED_LORA}.safetensors",
        prompts=SWEEP_PROMPTS,
        negative=SWEEP_NEGATIVE,
    )
    flow.node("PreviewImage", "Strength grid", size=GRID_PREVIEW_SIZE, images=sweep[0])
    return flow


def stacked_comparison_workflow(object_info: dict[str, Any]) -> WorkflowBuilder:
    """The new LoRA beside and on top of LoRAs the user already has, at the guides' stack strengths."""
    flow = WorkflowBuilder(object_info)
    checkpoint = flow.node("CheckpointLoaderSimple", "Load Checkpoint (SD1.5)", ckpt_name=CHECKPOINT)
    compare = flow.node(
        "CompareLoRAStack",
        "Compare LoRA Stack (list your other LoRAs in other_loras)",
        size=[400, 860],
        model=checkpoint[0],
        clip=checkpoint[1],
        vae=checkpoint[2],
        lora_name=f"{SAVED_LORA}.safetensors",
        other_loras=OTHER_LORAS,
        prompts=SWEEP_PROMPTS,
        negative=SWEEP_NEGATIVE,
    )
    flow.node("PreviewImage", "Stack grid", size=GRID_PREVIEW_SIZE, images=compare[0])
    return flow


def caption_only_workflow(object_info: dict[str, Any]) -> WorkflowBuilder:
    """Caption a folder and write the .txt files next to the images, to read and fix before training.
    Images that already have a caption keep it (mode "ignore"); the dataset check does not stop on
    missing captions, which is what this workflow is for."""
    flow = WorkflowBuilder(object_info)
    dataset = flow.node(
        "LoadDataset",
        "Load Dataset (a folder in ComfyUI/input)",
        folder=DATASET_FOLDER,
        trigger_word=TRIGGER_WORD,
        stop_on_errors=False,
    )
    flow.node(
        "AutoCaption",
        "Auto Caption (writes .txt files next to the images)",
        size=[400, 520],
        dataset=dataset[0],
        style="tags",
        tagger=TAGGER,
        caption_model="none",
        mode="ignore",
        write_sidecar_files=True,
    )
    return flow


WORKFLOWS: dict[str, Callable[[dict[str, Any]], WorkflowBuilder]] = {
    "train_then_test": train_then_test_workflow,
    "train_then_test_sd15": train_then_test_sd15_workflow,
    "test_existing_lora": existing_lora_workflow,
    "caption_only": caption_only_workflow,
    "stacked_comparison": stacked_comparison_workflow,
}


def build(name: str, object_info: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(API graph, UI workflow) of one shipped workflow."""
    flow = WORKFLOWS[name](object_info)
    api = flow.graph.to_api()
    workflow_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"lora-lab/workflows/{name}"))
    return api, api_to_ui(api, object_info, sizes=flow.sizes, workflow_id=workflow_id)


def dumps(document: Any) -> str:
    """JSON with two-space indents; short lists and inner objects (links, positions, node inputs) on one line."""
    return _format(document, 0) + "\n"


def _format(value: Any, depth: int) -> str:
    indent, inner = "  " * depth, "  " * (depth + 1)
    flat = json.dumps(value, ensure_ascii=False)
    nested = isinstance(value, (dict, list)) and any(
        isinstance(item, (dict, list)) for item in (value.values() if isinstance(value, dict) else value)
    )
    if len(flat) <= 120 and (
        isinstance(value, list) and not nested or isinstance(value, dict) and depth >= 2
    ):
        return flat
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(key)}: {_format(item, depth + 1)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and value:
        return "[\n" + ",\n".join(inner + _format(item, depth + 1) for item in value) + "\n" + indent + "]"
    return flat


def workflow_files(object_info: dict[str, Any], directory: Path = WORKFLOWS_DIR) -> dict[Path, str]:
    """Every file this script writes, with its text."""
    files = {}
    for name in WORKFLOWS:
        api, ui = build(name, object_info)
        files[directory / "api" / f"{name}.json"] = dumps(api)
        files[directory / f"{name}.json"] = dumps(ui)
    return files


def _object_info_from_a_fresh_server() -> dict[str, Any]:
    from tools.comfy_server import ComfyServer

    with tempfile.TemporaryDirectory(prefix="lora_lab_workflows_") as base, ComfyServer(base) as server:
        server.require_nodes("LoadDataset", "TrainLoRA", "SaveCheckpoint", "TestLoRAStrengthSweep")
        return server.object_info()


def _object_info_from(url: str) -> dict[str, Any]:
    import requests

    session = requests.Session()
    session.trust_env = False  # loopback: never through a proxy from the environment
    response = session.get(f"{url.rstrip('/')}/object_info", timeout=60)
    response.raise_for_status()
    return response.json()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed files; write nothing"
    )
    parser.add_argument("--url", help="a running ComfyUI with this pack (default: start one on a free port)")
    args = parser.parse_args(argv)

    object_info = _object_info_from(args.url) if args.url else _object_info_from_a_fresh_server()
    stale = []
    for path, text in workflow_files(object_info).items():
        current = path.read_text() if path.is_file() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    relative = [str(path.relative_to(REPO_ROOT)) for path in stale]
    if args.check:
        if stale:
            print("out of date (run python tools/make_workflows.py):", *relative, sep="\n  ")
            return 1
        print("workflows are up to date")
        return 0
    print("wrote:", *relative, sep="\n  ") if stale else print("workflows were already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
