"""Strength-sweep speed: TestLoRAStrengthSweep against the same images made the plain ways.

    .venv/bin/python benchmarks/sweep.py [--steps 8] [--size 64]

In one ComfyUI session on the tiny SD1.5 checkpoint, with a LoRA trained first (not timed):
  A. the sweep node: 7 strengths x 4 prompts (28 images, one grid), then again with batch_prompts;
  B. one graph with 28 plain KSampler + VAEDecode chains (no LoRA): the sampling floor;
  C. 28 queued graphs, each LoraLoader + CLIPTextEncode + KSampler + VAEDecode: what a user does by hand.
Prints each one's seconds and the ratios. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tools.comfy_server import ComfyServer  # noqa: E402
from tools.graph import Graph  # noqa: E402
from tools.setup_comfyui import ensure_comfyui  # noqa: E402
from tools.synthetic_dataset import make_shapes_dataset  # noqa: E402
from tools.tiny_models import build_tiny_sd15_checkpoint  # noqa: E402

STRENGTHS = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
PROMPTS = ["sks, a yellow ring", "sks, a ring on blue", "sks, a small ring", "sks, two rings"]
CKPT = "tiny.safetensors"
LORA = "bench/rings.safetensors"


def sampler_chain(graph: Graph, checkpoint, model, clip, prompt: str, args, prefix: str) -> None:
    positive = graph.node("CLIPTextEncode", clip=clip, text=prompt)
    negative = graph.node("CLIPTextEncode", clip=clip, text="")
    latent = graph.node("EmptyLatentImage", width=args.size, height=args.size, batch_size=1)
    sampled = graph.node("KSampler", model=model, positive=positive[0], negative=negative[0], latent_image=latent[0],
                         seed=1, steps=args.steps, cfg=4.0, sampler_name="euler", scheduler="normal", denoise=1.0)
    decoded = graph.node("VAEDecode", samples=sampled[0], vae=checkpoint[2])
    graph.node("SaveImage", images=decoded[0], filename_prefix=prefix)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    comfy_root = ensure_comfyui()
    base = Path(tempfile.mkdtemp(prefix="lora_lab_sweep_bench_"))
    (base / "models" / "checkpoints").mkdir(parents=True)
    build_tiny_sd15_checkpoint(base / "models" / "checkpoints" / CKPT, seed=0, comfy_root=comfy_root)
    make_shapes_dataset(base / "input" / "rings", count=6, size=64)
    with ComfyServer(base, comfy_root=comfy_root).start() as server:
        # Setup (not timed): a LoRA to test.
        graph = Graph()
        checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
        dataset = graph.node("LoadDataset", **{**server.widget_defaults("LoadDataset"), "folder": "rings", "resolution": 64})
        trained = graph.node("TrainLoRA", **{**server.widget_defaults("TrainLoRA"), "model": checkpoint[0],
                                             "clip": checkpoint[1], "vae": checkpoint[2], "dataset": dataset[0],
                                             "trigger_word": "sks", "steps": 20, "rank": 8, "alpha": 8.0})
        graph.node("SaveCheckpoint", lora=trained[0], filename=LORA.removesuffix(".safetensors"), if_exists="overwrite")
        server.run(graph.to_api(), timeout=900).raise_for_error()

        # Warm-up (not timed): load the checkpoint and sample once.
        warm = Graph()
        checkpoint = warm.node("CheckpointLoaderSimple", ckpt_name=CKPT)
        sampler_chain(warm, checkpoint, checkpoint[0], checkpoint[1], "warm up", args, "warm")
        server.run(warm.to_api()).raise_for_error()

        # A. the sweep node
        graph = Graph()
        checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
        sweep = graph.node("TestLoRAStrengthSweep", **{
            **server.widget_defaults("TestLoRAStrengthSweep"), "model": checkpoint[0], "clip": checkpoint[1],
            "vae": checkpoint[2], "lora_name": LORA, "prompts": "\n".join(PROMPTS),
            "strengths": ", ".join(map(str, STRENGTHS)), "include_baseline": False, "seed": 1, "steps": args.steps,
            "cfg": 4.0, "width": args.size, "height": args.size})
        result = server.run(graph.to_api(), timeout=3600).raise_for_error()
        sweep_seconds = result.node_seconds[sweep.id]
        graph.handle(sweep.id).set(batch_prompts=True)
        result = server.run(graph.to_api(), timeout=3600).raise_for_error()
        batched_seconds = result.node_seconds[sweep.id]

        # B. the same number of plain KSampler images, one graph
        graph = Graph()
        checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
        for index in range(len(STRENGTHS)):
            for prompt in PROMPTS:
                sampler_chain(graph, checkpoint, checkpoint[0], checkpoint[1], f"{prompt} {index}", args, f"plain_{index}")
        started = time.monotonic()
        server.run(graph.to_api(), timeout=3600).raise_for_error()
        plain_seconds = time.monotonic() - started

        # C. 28 separate LoraLoader + KSampler graphs, queued one after another
        started = time.monotonic()
        ids = []
        for strength in STRENGTHS:
            for prompt in PROMPTS:
                graph = Graph()
                checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
                loaded = graph.node("LoraLoader", model=checkpoint[0], clip=checkpoint[1], lora_name=LORA,
                                    strength_model=strength, strength_clip=strength)
                sampler_chain(graph, checkpoint, loaded[0], loaded[1], prompt, args, f"separate_{strength}")
                ids.append(server.submit(graph.to_api()))
        for prompt_id in ids:
            server.wait(prompt_id, timeout=3600).raise_for_error()
        separate_seconds = time.monotonic() - started

    cells = len(STRENGTHS) * len(PROMPTS)
    print(f"tiny SD1.5, {args.size}x{args.size}, {args.steps} sampling steps, {len(STRENGTHS)} strengths x "
          f"{len(PROMPTS)} prompts = {cells} images, CPU")
    print(f"{'':44} {'seconds':>8} {'per image':>10} {'vs sweep':>9}")
    for label, seconds in (("A. TestLoRAStrengthSweep (one node)", sweep_seconds),
                           ("A'. the same with batch_prompts", batched_seconds),
                           ("B. plain KSampler images, one graph (floor)", plain_seconds),
                           ("C. separate LoraLoader+KSampler graphs", separate_seconds)):
        print(f"{label:44} {seconds:8.2f} {seconds / cells:10.3f} {seconds / sweep_seconds:8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
