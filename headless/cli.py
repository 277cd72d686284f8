"""The command's arguments and its run: read the file, check it, set up ComfyUI, train, save, render."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .checks import check_machine, find_training_nodes, nodes_to_run, validate_with_comfyui
from .comfy_library import (
    find_comfyui,
    import_comfyui,
    object_info,
    register_builtin_extras,
    register_nodes,
    set_folders,
)
from .errors import HeadlessError
from .graph import NodeFailed, NodeRunner
from .workflow_files import named_node_types, read_workflow

PACK = __package__.rsplit(".", 1)[0] if __package__ and "." in __package__ else "lora_lab"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="headless/train.py",
        description="Train a LoRA from a workflow saved in the canvas (UI or API format) or a TOML config, with "
        "ComfyUI as a library: the same nodes, defaults and file as the canvas. Runs alone or under "
        "accelerate launch.",
    )
    parser.add_argument("workflow", type=Path, help="a workflow .json saved from the canvas, or a .toml config")
    parser.add_argument("--comfyui", help="ComfyUI folder (holds main.py); default: COMFYUI_PATH, else the "
                        "ComfyUI this pack is installed in")
    parser.add_argument("--models", type=Path, help="a models folder (checkpoints/, loras/, ...) searched before "
                        "ComfyUI's own")
    parser.add_argument("--input", type=Path, help="where dataset folder names are looked up (default: "
                        "ComfyUI's input folder)")
    parser.add_argument("--output", type=Path, help="output folder: the LoRA and checkpoints in OUTPUT/loras, the "
                        "grid in OUTPUT/lora_lab/sweeps (default: ComfyUI's models/loras and output)")
    parser.add_argument("--grid", action=argparse.BooleanOptionalAction, default=None,
                        help="render the strength grid after training (default: when the workflow has a Test "
                        "LoRA Strength Sweep node on the LoRA; --no-grid skips it)")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is there")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except NodeFailed as error:
        print(f"LoRA Lab: {error}", file=sys.stderr)
        return 1
    except HeadlessError as error:
        print(f"LoRA Lab: {error}", file=sys.stderr)
        return 2


def _process_rank() -> int:
    return int(os.environ.get("RANK", "0"))  # set by accelerate launch / torchrun


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if _process_rank() == 0 else logging.WARNING, format="%(message)s")
    import_comfyui(find_comfyui(args.comfyui), args.cpu)
    set_folders(args.models, args.input, args.output)
    classes = register_nodes(PACK)
    if named_node_types(args.workflow) - set(classes):
        classes = register_builtin_extras()
    info = object_info(classes)
    api, workflow = read_workflow(args.workflow, info)
    chosen = find_training_nodes(api, info, args.workflow.name, args.grid)
    nodes = nodes_to_run(api, chosen)
    check_machine(api, nodes, classes, PACK)
    validate_with_comfyui(api, nodes)

    import torch

    run_context = importlib.import_module(f"{PACK}.nodes.run_context")
    context = _run_context(run_context, args.cpu)
    runner = NodeRunner(api, classes, workflow)
    with run_context.run_context(context), torch.inference_mode():
        if not context.is_main_process:  # train with the others; only the main process saves and renders
            runner.outputs(chosen.train)
            return 0
        _, lora_name = runner.outputs(chosen.save)
        if chosen.grid is not None:
            runner.outputs(chosen.grid)
    _report(runner, chosen.grid, lora_name, api[chosen.train]["inputs"].get("run_name", ""))
    print(runner.outputs(chosen.train)[-1], flush=True)  # Train LoRA's report: the run and its loss diagnosis
    return 0


def _run_context(run_context: Any, cpu: bool) -> Any:
    """One process alone, or this process of the ones ``accelerate launch`` started (data parallel)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return run_context.RunContext()
    parallel_module = importlib.import_module(f"{PACK}.trainer_core.training.parallel")
    parallel = parallel_module.AcceleratedProcesses(cpu=True if cpu else None)
    sharding = [name for name in ("FSDP", "DEEPSPEED") if os.environ.get(f"ACCELERATE_USE_{name}", "") == "true"]
    if sharding and parallel.is_main:
        logging.warning(
            "LoRA Lab: accelerate's config asks for %s, which this runner does not apply: every process holds the "
            "whole base model and the LoRA's gradients are summed across processes (data parallel). If the model "
            "does not fit one GPU, see the README's 'Beyond one machine' for what does.", " and ".join(sharding))
    return run_context.RunContext(parallel=parallel, is_main_process=parallel.is_main)


def _report(runner: NodeRunner, grid: str | None, lora_name: str, run_name: str) -> None:
    import folder_paths

    lines = [f"LoRA: {folder_paths.get_full_path('loras', lora_name)}"]
    checkpoints = Path(folder_paths.get_folder_paths("loras")[0]) / "lora_lab_checkpoints"
    sanitize_filename = importlib.import_module(f"{PACK}.trainer_core.adapters.export").sanitize_filename
    lines.append(f"loss log: {checkpoints / (sanitize_filename(run_name) + '_loss.csv')}")
    ui = runner.ui.get(grid) if grid is not None else None
    if ui:
        for image in ui.get("images", []):
            lines.append(f"grid: {Path(folder_paths.get_output_directory()) / image['subfolder'] / image['filename']}")
    print("\n".join(lines), flush=True)
