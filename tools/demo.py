"""The main job, headless: train a LoRA and test it on the embedded toy default, through a real ComfyUI.

    .venv/bin/python tools/demo.py [--steps N] [--keep-server]

Assembles the toy base model (a tiny SD1.5-format model pretrained here to draw coloured shapes:
``tools/toy_model.py``) and its demo dataset (green rings on red, a shape the toy has never drawn,
captioned with the trigger word "sks"), starts ComfyUI on a loopback port with this pack, queues
the shipped workflow ``workflows/api/train_then_test.json`` as it is, and prints where the LoRA,
the loss curve and the strength grid were written. Everything lives under ``.out/demo/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tools.comfy_server import ComfyServer  # noqa: E402
from tools.setup_comfyui import ensure_comfyui  # noqa: E402
from tools.toy_model import ToyModelError, assemble_toy_checkpoint, install_toy  # noqa: E402

WORKFLOW = REPO / "workflows" / "api" / "train_then_test.json"


def nodes_of(graph: dict, class_type: str) -> list[dict]:
    found = [node for node in graph.values() if node["class_type"] == class_type]
    if not found:
        raise SystemExit(
            f"{WORKFLOW} has no {class_type} node: the shipped workflow changed, update tools/demo.py"
        )
    return found


def demo_graph(steps: int | None) -> dict:
    """The shipped workflow; optionally another step count. Previews become saved files."""
    graph = json.loads(WORKFLOW.read_text(encoding="utf-8"))
    if steps is not None:
        for node in nodes_of(graph, "TrainLoRA"):
            node["inputs"]["steps"] = steps
    # Previews live in ComfyUI's temp folder, which it empties: keep the loss curve as a file.
    for node in graph.values():
        if node["class_type"] == "PreviewImage":
            node["class_type"] = "SaveImage"
            node["inputs"]["filename_prefix"] = "lora_lab_demo/preview"
    return graph


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps (default: the workflow's 200, a few minutes)"
    )
    parser.add_argument(
        "--keep-server", action="store_true", help="leave ComfyUI running to look at it in a browser"
    )
    args = parser.parse_args()

    comfy_root = ensure_comfyui()
    base = REPO / ".out" / "demo"
    try:
        install_toy(base, link_from=assemble_toy_checkpoint())
    except ToyModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    server = ComfyServer(base, comfy_root=comfy_root).start()
    try:
        steps = args.steps if args.steps is not None else "the workflow's"
        print(f"ComfyUI is running at {server.url}; training ({steps} steps) ...", flush=True)
        started = time.monotonic()
        graph = demo_graph(args.steps)
        result = server.run(graph, timeout=3600)
        if not result.ok:
            print(
                f"the workflow failed: {result.error}\n--- server log ---\n{server.log_tail(40)}",
                file=sys.stderr,
            )
            return 1
        print(f"done in {time.monotonic() - started:.0f} s")
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
