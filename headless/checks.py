"""Before anything loads or trains: which nodes to run, and whether this machine has what they name.

Each refusal names the node (or the TOML key) and the fix: a workflow without Train LoRA, a checkpoint not
in the model folders (listing them), a dataset folder that is not on this machine, a node type this
ComfyUI lacks; then ComfyUI's own validation of those nodes, as the canvas's Run would do it.
"""

from __future__ import annotations

import asyncio
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import HeadlessError
from .graph import needed_nodes, title
from .node_inputs import default_inputs
from .ui_workflow import without_meta

TRAIN_LORA, SAVE_LORA, SWEEP = "TrainLoRA", "SaveCheckpoint", "TestLoRAStrengthSweep"
MODEL_FILES = {("CheckpointLoaderSimple", "ckpt_name"): "checkpoints"}


@dataclass(frozen=True)
class TrainingNodes:
    train: str
    save: str
    grid: str | None  # the strength sweep to render after training, if any


def find_training_nodes(api: dict[str, Any], object_info: dict[str, Any], source: str,
                        grid: bool | None) -> TrainingNodes:
    """Train LoRA, the Save LoRA it feeds (one is added when the workflow has none) and the sweep to render:
    the workflow's own unless ``grid`` is False, one with the sweep's defaults when ``grid`` is True and the
    workflow has none."""
    trainers = [node_id for node_id, node in api.items() if node["class_type"] == TRAIN_LORA]
    if not trainers:
        raise HeadlessError(
            f"{source} has no Train LoRA node (TrainLoRA), so there is nothing to train. Open it in the canvas, "
            "add Train LoRA (model, clip, vae from Load Checkpoint; dataset from Load Dataset), save the "
            "workflow and run this again."
        )
    if len(trainers) > 1:
        raise HeadlessError(
            f"{source} has {len(trainers)} Train LoRA nodes ({', '.join(title(api, t) for t in trainers)}); the "
            "headless runner trains one. Mute the others in the canvas (Ctrl+M) and save the workflow again."
        )
    train = trainers[0]
    savers = [node_id for node_id, node in api.items()
              if node["class_type"] == SAVE_LORA and node["inputs"].get("lora") == [train, 0]]
    save = savers[0] if savers else _add_save(api, object_info, train)
    sweeps = [node_id for node_id, node in api.items()
              if node["class_type"] == SWEEP and node["inputs"].get("lora") in ([save, 0], [train, 0])]
    if grid is False:
        return TrainingNodes(train, save, None)
    if sweeps:
        return TrainingNodes(train, save, sweeps[0])
    return TrainingNodes(train, save, _add_sweep(api, object_info, train, save) if grid else None)


def _add_save(api: dict[str, Any], object_info: dict[str, Any], train: str) -> str:
    run_name = str(api[train]["inputs"].get("run_name") or "my_lora")
    inputs = {**default_inputs(object_info[SAVE_LORA]), "filename": f"lora_lab/{run_name}", "lora": [train, 0]}
    api["headless_save"] = {"class_type": SAVE_LORA, "inputs": inputs, "_meta": {"title": "Save LoRA (added)"}}
    return "headless_save"


def _add_sweep(api: dict[str, Any], object_info: dict[str, Any], train: str, save: str) -> str:
    trainer = api[train]["inputs"]
    inputs = {**default_inputs(object_info[SWEEP]), "model": trainer["model"], "clip": trainer["clip"],
              "vae": trainer["vae"], "lora": [save, 0]}
    dataset = trainer.get("dataset")
    resolution = api[dataset[0]]["inputs"].get("resolution") if isinstance(dataset, list) else None
    if isinstance(resolution, int):  # the size the LoRA trained at
        inputs.update(width=resolution, height=resolution)
    api["headless_grid"] = {"class_type": SWEEP, "inputs": inputs, "_meta": {"title": "Strength sweep (--grid)"}}
    return "headless_grid"


def check_machine(api: dict[str, Any], nodes: list[str], classes: dict[str, Any], pack: str) -> None:
    """Every node to run exists in this ComfyUI, and the files and folders they name are on this machine."""
    import folder_paths

    resolve_folder = importlib.import_module(f"{pack}.nodes.load_dataset").resolve_folder
    for node_id in nodes:
        node = api[node_id]
        class_type, inputs = node["class_type"], node["inputs"]
        if class_type not in classes:
            raise HeadlessError(
                f"{title(api, node_id)}: this ComfyUI has no node type {class_type!r}; the headless runner knows "
                "ComfyUI's built-in nodes and LoRA Lab's. Replace it in the canvas and save the workflow again."
            )
        for (node_type, name), folder in MODEL_FILES.items():
            value = inputs.get(name)
            if class_type == node_type and isinstance(value, str) and folder_paths.get_full_path(folder, value) is None:
                looked = "\n".join(f"  {path}" for path in folder_paths.get_folder_paths(folder))
                raise HeadlessError(
                    f"{title(api, node_id)}: {name} {value!r} is not in the {folder} folders:\n{looked}\nPut the "
                    f"file into one of them, or give the models folder that holds {folder}/{value} with --models DIR."
                )
        if class_type == "LoadDataset" and isinstance(inputs.get("folder"), str):
            path = resolve_folder(inputs["folder"])
            if not Path(path).is_dir():
                raise HeadlessError(
                    f"{title(api, node_id)}: dataset folder {inputs['folder']!r} is not on this machine (looked "
                    f"for {path}). Copy the dataset there, set folder to where it is (an absolute path), or give "
                    "the folder that holds it with --input DIR."
                )


def validate_with_comfyui(api: dict[str, Any], nodes: list[str]) -> None:
    """ComfyUI's own validation of the nodes to run (ranges, choices, each node's validate_inputs)."""
    import execution

    prompt = without_meta({node_id: api[node_id] for node_id in nodes})
    valid, error, _, node_errors = asyncio.run(execution.validate_prompt("lora-lab-headless", prompt, None))
    if valid:
        return
    lines = [f"{title(api, node_id)}: " + "; ".join(f"{e['message']}: {e['details']}" for e in found["errors"])
             for node_id, found in node_errors.items()]
    raise HeadlessError("ComfyUI refused the workflow:\n" + ("\n".join(lines) or f"{error['message']}: "
                                                           f"{error.get('details', '')}"))


def nodes_to_run(api: dict[str, Any], chosen: TrainingNodes) -> list[str]:
    return needed_nodes(api, [chosen.save] + ([chosen.grid] if chosen.grid else []))
