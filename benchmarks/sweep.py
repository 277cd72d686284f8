"""Strength-sweep speed: TestLoRAStrengthSweep against the same images made the plain ways.

    .venv/bin/python benchmarks/sweep.py [--steps 8] [--size 64] [--repeats 5] [--threads 4]

In one ComfyUI session on the tiny SD1.5 checkpoint, with a LoRA trained first (not timed):
  A. the sweep node: 7 strengths x 4 prompts (28 images, one grid), then again with batch_prompts;
  B. one graph with the 4 prompts encoded once and 28 plain KSampler + VAEDecode chains (no LoRA): the sampling
     floor, like for like;
  C. 28 queued graphs, each LoraLoader + CLIPTextEncode + KSampler + VAEDecode: what a user does by hand.
Every arm is timed the same way, by this client from queueing its graphs to the end of the last, repeated
(interleaved, a new seed each round so that ComfyUI's cache answers nothing) and reported as median and
min–max, with the ratio of medians against B. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import default_threads, spread  # noqa: E402

from tools.comfy_server import ComfyServer  # noqa: E402
from tools.graph import Graph  # noqa: E402
from tools.setup_comfyui import ensure_comfyui  # noqa: E402
from tools.synthetic_dataset import make_shapes_dataset  # noqa: E402
from tools.tiny_models import build_tiny_sd15_checkpoint  # noqa: E402

STRENGTHS = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
PROMPTS = ["sks, a yellow ring", "sks, a ring on blue", "sks, a small ring", "sks, two rings"]
CKPT = "tiny.safetensors"
LORA = "bench/rings.safetensors"


def encode(graph: Graph, clip, prompt: str):
    return graph.node("CLIPTextEncode", clip=clip, text=prompt)[0]


def sampler_chain(graph: Graph, checkpoint, model, positive, negative, args, prefix: str, seed: int = 1) -> None:
    latent = graph.node("EmptyLatentImage", width=args.size, height=args.size, batch_size=1)
    sampled = graph.node("KSampler", model=model, positive=positive, negative=negative, latent_image=latent[0],
                         seed=seed, steps=args.steps, cfg=4.0, sampler_name="euler", scheduler="normal", denoise=1.0)
    decoded = graph.node("VAEDecode", samples=sampled[0], vae=checkpoint[2])
    graph.node("SaveImage", images=decoded[0], filename_prefix=prefix)


def train_once(server: ComfyServer) -> None:
    """Setup (not timed): a LoRA to test."""
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
    dataset = graph.node("LoadDataset", **{**server.widget_defaults("LoadDataset"), "folder": "rings", "resolution": 64})
    trained = graph.node("TrainLoRA", **{**server.widget_defaults("TrainLoRA"), "model": checkpoint[0],
                                         "clip": checkpoint[1], "vae": checkpoint[2], "dataset": dataset[0],
                                         "trigger_word": "sks", "steps": 20, "rank": 8, "alpha": 8.0})
    graph.node("SaveCheckpoint", lora=trained[0], filename=LORA.removesuffix(".safetensors"), if_exists="overwrite")
    server.run(graph.to_api(), timeout=900).raise_for_error()


def sweep_graph(server: ComfyServer, args, seed: int, batch_prompts: bool) -> list[dict]:
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
    graph.node("TestLoRAStrengthSweep", **{
        **server.widget_defaults("TestLoRAStrengthSweep"), "model": checkpoint[0], "clip": checkpoint[1],
        "vae": checkpoint[2], "lora_name": LORA, "prompts": "\n".join(PROMPTS),
        "strengths": ", ".join(map(str, STRENGTHS)), "include_baseline": False, "seed": seed, "steps": args.steps,
        "cfg": 4.0, "width": args.size, "height": args.size, "batch_prompts": batch_prompts})
    return [graph.to_api()]


def plain_graph(server: ComfyServer, args, seed: int) -> list[dict]:
    """The same images as the sweep without a LoRA, in one graph: its 4 prompts (and the empty negative) encoded
    once, as the sweep encodes them, and one KSampler + VAEDecode per image (a sampling seed per strength, so no
    two chains are the same graph node and ComfyUI's cache answers none): the sampling floor."""
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
    negative = encode(graph, checkpoint[1], "")
    positives = [encode(graph, checkpoint[1], prompt) for prompt in PROMPTS]
    for index in range(len(STRENGTHS)):
        for number, positive in enumerate(positives):
            sampler_chain(graph, checkpoint, checkpoint[0], positive, negative, args, f"plain_{index}_{number}",
                          seed * 100 + index)
    return [graph.to_api()]


def separate_graphs(server: ComfyServer, args, seed: int) -> list[dict]:
    """One LoraLoader + KSampler graph per image, queued one after another: what a user does by hand."""
    graphs = []
    for strength in STRENGTHS:
        for prompt in PROMPTS:
            graph = Graph()
            checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
            loaded = graph.node("LoraLoader", model=checkpoint[0], clip=checkpoint[1], lora_name=LORA,
                                strength_model=strength, strength_clip=strength)
            sampler_chain(graph, checkpoint, loaded[0], encode(graph, loaded[1], prompt), encode(graph, loaded[1], ""),
                          args, f"separate_{strength}", seed)
            graphs.append(graph.to_api())
    return graphs


def timed(server: ComfyServer, graphs: list[dict]) -> float:
    """Seconds from queueing the first graph to the last one's end, measured by this client (every arm alike)."""
    started = time.monotonic()
    ids = [server.submit(graph) for graph in graphs]
    for prompt_id in ids:
        server.wait(prompt_id, timeout=3600).raise_for_error()
    return time.monotonic() - started


ARMS = {
    "A. TestLoRAStrengthSweep (one node)": lambda server, args, seed: sweep_graph(server, args, seed, False),
    "A'. the same with batch_prompts": lambda server, args, seed: sweep_graph(server, args, seed, True),
    "B. plain KSampler images, one graph (floor)": plain_graph,
    "C. separate LoraLoader+KSampler graphs": separate_graphs,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="runs per arm, interleaved, each with a new seed")
    parser.add_argument("--threads", type=int, default=default_threads(), help="OMP threads of the ComfyUI process")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the server inherits it; torch reads it at start
    comfy_root = ensure_comfyui()
    base = Path(tempfile.mkdtemp(prefix="lora_lab_sweep_bench_"))
    (base / "models" / "checkpoints").mkdir(parents=True)
    build_tiny_sd15_checkpoint(base / "models" / "checkpoints" / CKPT, seed=0, comfy_root=comfy_root)
    make_shapes_dataset(base / "input" / "rings", count=6, size=64)
    seconds: dict[str, list[float]] = {name: [] for name in ARMS}
    with ComfyServer(base, comfy_root=comfy_root).start() as server:
        train_once(server)
        timed(server, plain_graph(server, args, seed=0))  # warm-up (not timed): load the checkpoint, sample once
        for repeat in range(args.repeats):
            for name, graphs in ARMS.items():
                # A new seed each repeat: ComfyUI would otherwise answer a repeated graph from its cache.
                seconds[name].append(timed(server, graphs(server, args, 1 + repeat)))
            print(f"  repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)

    cells = len(STRENGTHS) * len(PROMPTS)
    floor = statistics.median(seconds["B. plain KSampler images, one graph (floor)"])
    print(f"tiny SD1.5, {args.size}x{args.size}, {args.steps} sampling steps, {len(STRENGTHS)} strengths x "
          f"{len(PROMPTS)} prompts = {cells} images, CPU, {args.threads} threads, {args.repeats} runs per arm "
          "(median, min–max), each timed by this client from queueing to the end")
    print(f"{'':44} {'seconds':>20} {'per image':>10} {'vs plain (B)':>13}")
    for name, values in seconds.items():
        middle = statistics.median(values)
        print(f"{name:44} {spread(values, digits=2):>20} {middle / cells:10.3f} {middle / floor:12.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
