"""The headless runner (headless/train.py) in a subprocess, against a test server's folders, and the
workflow edits its tests make (tiny values in UI and API files)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from headless.node_inputs import widget_specs
from tools.comfy_process import child_environment
from tools.comfy_server import ComfyServer

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNNER = REPO_ROOT / "headless" / "train.py"


def runner_environment(comfy_root: Path, threads: int | None = 1) -> dict[str, str]:
    env = child_environment({"COMFYUI_PATH": str(comfy_root)})
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run_headless(workflow: Path, server: ComfyServer, output: Path, *extra: str, threads: int | None = 1,
                 launcher: list[str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python headless/train.py workflow`` with the server's models and input folders, into ``output``."""
    command = [*(launcher or [sys.executable]), str(RUNNER), str(workflow), "--models", str(server.models_dir),
               "--input", str(server.input_dir), "--output", str(output), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=output.parent,
                          env=runner_environment(server.comfy_root, threads))


def set_ui_widgets(ui: dict[str, Any], object_info: dict[str, Any], class_type: str, **values: Any) -> None:
    """Set widget values by name on the one node of this type in a canvas workflow."""
    (node,) = [node for node in ui["nodes"] if node["type"] == class_type]
    position = 0
    for spec in widget_specs(object_info[class_type]):
        if spec.name in values:
            node["widgets_values"][position] = values.pop(spec.name)
        position += 1 + spec.control_values
    assert not values, f"{class_type} has no widgets {sorted(values)}"


def tiny_ui(ui: dict[str, Any], object_info: dict[str, Any], changes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ui = copy.deepcopy(ui)
    for class_type, values in changes.items():
        set_ui_widgets(ui, object_info, class_type, **dict(values))
    return ui


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path


def accelerate_launcher(processes: int) -> list[str]:
    """``accelerate launch`` with ``processes`` CPU processes (gloo), one thread each. ``--cpu`` would make
    accelerate start a single process, so the multi-process launcher is asked for without GPUs."""
    from tools.comfy_server import free_port

    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--num_cpu_threads_per_process", "1", "--main_process_port", str(free_port())]


def toy_config(path: Path, run_name: str, filename: str, **train: Any) -> Path:
    """A TOML config training the toy on the demo's rings at 64 px."""
    lines = ['checkpoint = "toy_sd15.safetensors"', "[dataset]", 'folder = "lora_lab_toy_rings"', "resolution = 64",
             'trigger_word = "sks"', "[train]", f'run_name = "{run_name}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in train.items()]
    lines += ["[save]", f'filename = "{filename}"']
    path.write_text("\n".join(lines) + "\n")
    return path
