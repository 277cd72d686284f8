"""The main job, headless: train a LoRA and test it on the embedded tiny default, through a real ComfyUI.

    .venv/bin/python tools/demo.py [--steps 300] [--keep-server]

Builds the tiny SD1.5-format model and a small generated dataset (yellow rings with the trigger word
"sks"), starts ComfyUI on a loopback port with this pack, queues the shipped workflow
``workflows/api/train_then_test.json`` with settings for the tiny model, and prints where the LoRA,
the loss curve and the strength grid were written. Everything lives under ``.out/demo/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tools.comfy_server import ComfyServer  # noqa: E402
from tools.setup_comfyui import ensure_comfyui  # noqa: E402
from tools.synthetic_dataset import make_shapes_dataset  # noqa: E402
from tools.tiny_models import TINY_SD15_VERSION, build_tiny_sd15_checkpoint  # noqa: E402

WORKFLOW = REPO / "workflows" / "api" / "train_then_test.json"
CHECKPOINT = "lora_lab_tiny_sd15.safetensors"
DATASET = "lora_lab_demo_rings"
LORA_NAME = "lora_lab_demo/rings"


def tiny_checkpoint(comfy_root: Path) -> Path:
    cache = REPO / ".cache" / "tiny_models"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"demo_tiny_sd15-v{TINY_SD15_VERSION}.safetensors"
    if not path.is_file():
        print("building the tiny model ...", flush=True)
        build_tiny_sd15_checkpoint(path, seed=0, comfy_root=comfy_root)
    return path


def nodes_of(graph: dict, class_type: str) -> list[dict]:
    found = [node for node in graph.values() if node["class_type"] == class_type]
    if not found:
        raise SystemExit(
            f"{WORKFLOW} has no {class_type} node: the shipped workflow changed, update tools/demo.py"
        )
    return found


def demo_graph(steps: int) -> dict:
    """The shipped workflow with the settings the tiny 64 px model needs."""
    graph = json.loads(WORKFLOW.read_text(encoding="utf-8"))
    for node in nodes_of(graph, "CheckpointLoaderSimple"):
        node["inputs"]["ckpt_name"] = CHECKPOINT
    for node in nodes_of(graph, "LoadDataset"):
        node["inputs"].update(folder=DATASET, resolution=64, bucket_step=64)
    for node in nodes_of(graph, "TrainLoRA"):
        node["inputs"].update(trigger_word="sks", steps=steps, rank=8, alpha=8.0, learning_rate=1e-3)
    for node in nodes_of(graph, "SaveCheckpoint"):
        node["inputs"].update(filename=LORA_NAME, if_exists="add number")
    for node in nodes_of(graph, "TestLoRAStrengthSweep"):
        node["inputs"].update(
            width=64,
            height=64,
            steps=12,
            cfg=4.0,
            prompts="{trigger}, a yellow ring on a blue background\n{trigger}, a yellow ring on a red background",
        )
    # Previews live in ComfyUI's temp folder, which it empties: keep the loss curve as a file.
    for node in graph.values():
        if node["class_type"] == "PreviewImage":
            node["class_type"] = "SaveImage"
            node["inputs"]["filename_prefix"] = "lora_lab_demo/preview"
    return graph


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=int, default=300, help="training steps (default 300, a few minutes on CPU)"
    )
    parser.add_argument(
        "--keep-server", action="store_true", help="leave ComfyUI running to look at it in a browser"
    )
    args = parser.parse_args()

    comfy_root = ensure_comfyui()
    base = REPO / ".out" / "demo"
    (base / "models" / "checkpoints").mkdir(parents=True, exist_ok=True)
    target = base / "models" / "checkpoints" / CHECKPOINT
    if not target.exists():
        shutil.copyfile(tiny_checkpoint(comfy_root), target)
    dataset = base / "input" / DATASET
    shutil.rmtree(dataset, ignore_errors=True)
    make_shapes_dataset(
        dataset, count=8, size=64, shape="ring", colour="yellow", background="blue", trigger_word="sks"
    )

    server = ComfyServer(base, comfy_root=comfy_root).start()
    try:
        print(f"ComfyUI is running at {server.url}; training {args.steps} steps ...", flush=True)
        started = time.monotonic()
        result = server.run(demo_graph(args.steps), timeout=3600)
        if not result.ok:
            print(
                f"the workflow failed: {result.error}\n--- server log ---\n{server.log_tail(40)}",
                file=sys.stderr,
            )
            return 1
        print(f"done in {time.monotonic() - started:.0f} s")
        graph = demo_graph(args.steps)
        for node_id, output in result.outputs.items():
            kind = graph[node_id]["class_type"]
            for entry in output.get("images", []):
                print(f"{kind:>24}: {server.output_file(entry)}")
            for text in output.get("text", []):
                if kind == "SaveCheckpoint":
                    print(f"{'LoRA':>24}: {text.splitlines()[-1]}")
        if args.keep_server:
            input(f"ComfyUI stays up at {server.url}; press Enter to stop it ")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
