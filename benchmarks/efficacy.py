"""Efficacy: does a LoRA teach the toy base a new shape? LoRA Lab's Train LoRA (its defaults) against
ComfyUI's own TrainLoraNode, on the same images, steps, batch 1, rank and learning rate.

    .venv/bin/python benchmarks/efficacy.py                  # 7 min on 2 CPU cores at load ~2, 12 at ~15
    .venv/bin/python benchmarks/efficacy.py --seeds 8 --train-seeds 2    # more repeats (opt-in)
    .venv/bin/python benchmarks/efficacy.py --seeds 4 --train-seeds 2 --variant "a64:alpha=64"   # README's table

The concept is a plus-shaped cross (tools/shape_score.py), a shape the toy base (tools/toy_model.py)
never drew, on 12 procedural pictures, each in its own colour pair so that only the shape is common;
captions "sks, a <colour> plus on a <background> background". In one ComfyUI server on CPU:
  ours:   LoadDataset -> TrainLoRA (Train LoRA's defaults; steps, batch 1, seed set) -> Save LoRA, then
          LoraLoader at each strength -> KSampler -> VAEDecode;
  native: LoadImageTextDataSetFromFolder -> MakeTrainingDataset -> TrainLoraNode (the same steps, batch 1,
          rank and learning rate; fp32 like ours on CPU; gradient checkpointing off: same result, faster;
          its own choices otherwise: every layer, alpha 1, loss on x0) -> LoraModelLoader at each strength
          -> KSampler -> VAEDecode.
Every arm renders the same prompts and seeds (held-out colour pairs, euler, 20 steps, cfg 5, 64 px) at
strengths 0, 0.4, 0.6, 0.8, 1.0. Each picture gets the shape score of tools/shape_score.py minus the
score of the same seed's picture at strength 0 (so 0 = no change; about +0.2 = the base's blob became
a plus as well as the toy's VAE can draw one: the training pictures score +0.22, their VAE round trip
+0.09, the base's own pictures about -0.17). Prints a strength x arm table (median and min-max over sampling seeds x training seeds), the
ratio to native, each arm's trainable parameters and layers, and its training time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.lora_layers import LayerSummary, summarise_lora_file  # noqa: E402
from tools.comfy_server import ComfyServer  # noqa: E402
from tools.graph import Graph  # noqa: E402
from tools.setup_comfyui import ensure_comfyui  # noqa: E402
from tools.shape_score import CONCEPT_SHAPE, shape_score, write_concept_dataset  # noqa: E402
from tools.toy_model import TOY_CKPT, assemble_toy_checkpoint  # noqa: E402
from tools.toy_scenes import TOY_COLOURS  # noqa: E402

STRENGTHS = (0.0, 0.4, 0.6, 0.8, 1.0)
TRIGGER = "sks"
DATASET = "efficacy_plus"
NATIVE = "native"
OURS = "ours"
RATIO_FLOOR = 0.02


@dataclass
class Arm:
    name: str
    label: str
    overrides: dict = field(default_factory=dict)  # Train LoRA inputs changed from their defaults
    train_seconds: list[float] = field(default_factory=list)
    layers: LayerSummary | None = None
    raw: dict = field(default_factory=dict)  # (train seed, strength, sample seed) -> shape score


def parse_variant(text: str) -> Arm:
    """``name:key=value,key=value``: another LoRA Lab arm, Train LoRA's defaults with these changed."""
    name, _, assignments = text.partition(":")
    overrides = {}
    for assignment in filter(None, assignments.split(",")):
        key, _, value = assignment.partition("=")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value.strip()
    return Arm(name, f"ours, {name}", overrides)


def sample_prompts(count: int, training_captions: list[str]) -> list[str]:
    """One prompt per sampling seed, each in a colour pair no training picture has."""
    seen = {caption.split(", ", 1)[1] for caption in training_captions}
    names = list(TOY_COLOURS)
    unseen = [f"a {c} {CONCEPT_SHAPE} on a {b} background" for c in names for b in names if c != b]
    unseen = [text for text in unseen if text not in seen]
    order = np.random.default_rng(1).permutation(len(unseen))
    return [f"{TRIGGER}, {unseen[order[i % len(unseen)]]}" for i in range(count)]


def add_sampling(graph: Graph, checkpoint, model_for, prompts: list[str], args, prefix: str) -> dict:
    """KSampler + VAEDecode + SaveImage for every strength and seed; ``model_for(strength)`` gives the MODEL
    link. Returns {(strength, seed): SaveImage node id}."""
    negative = graph.node("CLIPTextEncode", clip=checkpoint[1], text="")
    latent = graph.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    savers = {}
    for seed, prompt in enumerate(prompts):
        positive = graph.node("CLIPTextEncode", clip=checkpoint[1], text=prompt)
        for strength in STRENGTHS:
            sampled = graph.node("KSampler", model=model_for(strength), positive=positive[0], negative=negative[0],
                                 latent_image=latent[0], seed=seed, steps=args.sample_steps, cfg=args.cfg,
                                 sampler_name="euler", scheduler="normal", denoise=1.0)
            decoded = graph.node("VAEDecode", samples=sampled[0], vae=checkpoint[2])
            saver = graph.node("SaveImage", images=decoded[0], filename_prefix=f"{prefix}_{strength}_{seed}")
            savers[(strength, seed)] = saver.id
    return savers


def read_scores(server: ComfyServer, result, savers: dict, arm: Arm, train_seed: int) -> None:
    for (strength, seed), node_id in savers.items():
        (path,) = server.output_files(result, node_id)
        picture = np.asarray(Image.open(path).convert("RGB"))
        arm.raw[(train_seed, strength, seed)] = shape_score(picture).score
        shutil.copy(path, server.output_dir / "cells" / f"{arm.name}_t{train_seed}_{strength}_{seed}.png")


def run_ours(server: ComfyServer, arm: Arm, train_seed: int, prompts: list[str], args) -> None:
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=TOY_CKPT)
    dataset = graph.node("LoadDataset", **{**server.widget_defaults("LoadDataset"), "folder": DATASET,
                                           "resolution": 64, "bucket_step": 64, "trigger_word": ""})
    inputs = {**server.widget_defaults("TrainLoRA"), "model": checkpoint[0], "clip": checkpoint[1],
              "vae": checkpoint[2], "dataset": dataset[0], "steps": args.steps, "batch_size": 1, "seed": train_seed,
              "rank": args.rank, "learning_rate": args.lr, "run_name": f"efficacy_{arm.name}", **arm.overrides}
    trainer = server.train_lora(graph, **inputs)
    filename = f"efficacy/{arm.name}_{train_seed}"
    graph.node("SaveCheckpoint", lora=trainer[0], filename=filename, if_exists="overwrite")
    result = server.run(graph.to_api(), timeout=3600).raise_for_error()
    arm.train_seconds.append(result.node_seconds[trainer.id])
    arm.layers = summarise_lora_file(server.models_dir / "loras" / f"{filename}.safetensors")

    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=TOY_CKPT)
    loaders = {s: graph.node("LoraLoader", model=checkpoint[0], clip=checkpoint[1], lora_name=f"{filename}.safetensors",
                             strength_model=s, strength_clip=s) for s in STRENGTHS}
    savers = add_sampling(graph, checkpoint, lambda s: loaders[s][0], prompts, args, f"{arm.name}_{train_seed}")
    read_scores(server, server.run(graph.to_api(), timeout=3600).raise_for_error(), savers, arm, train_seed)


def run_native(server: ComfyServer, arm: Arm, train_seed: int, prompts: list[str], args) -> None:
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=TOY_CKPT)
    folder = graph.node("LoadImageTextDataSetFromFolder", folder=DATASET)
    encoded = graph.node("MakeTrainingDataset", images=folder[0], vae=checkpoint[2], clip=checkpoint[1], texts=folder[1])
    trainer = graph.node("TrainLoraNode", model=checkpoint[0], latents=encoded[0], positive=encoded[1], batch_size=1,
                         grad_accumulation_steps=1, steps=args.steps, learning_rate=args.lr, rank=args.rank,
                         optimizer="AdamW", loss_function="MSE", seed=train_seed, training_dtype="fp32",
                         lora_dtype="fp32", algorithm="LoRA", gradient_checkpointing=False, existing_lora="[None]")
    prefix = f"loras/efficacy_native_{train_seed}"
    graph.node("SaveLoRA", lora=trainer[1], prefix=prefix)
    loaders = {s: graph.node("LoraModelLoader", model=checkpoint[0], lora=trainer[1], strength_model=s)
               for s in STRENGTHS}
    savers = add_sampling(graph, checkpoint, lambda s: loaders[s][0], prompts, args, f"native_{train_seed}")
    result = server.run(graph.to_api(), timeout=3600).raise_for_error()
    arm.train_seconds.append(result.node_seconds[trainer.id])
    (saved,) = sorted((server.output_dir / "loras").glob(f"efficacy_native_{train_seed}_*.safetensors"))[-1:]
    arm.layers = summarise_lora_file(saved)
    read_scores(server, result, savers, arm, train_seed)


def scores_at(arm: Arm, strength: float) -> list[float]:
    """Each picture's score minus its seed's strength-0 picture's (same arm and training seed)."""
    return [value - arm.raw[(t, 0.0, seed)] for (t, s, seed), value in arm.raw.items() if s == strength]


def ratio_text(median: float, reference: float) -> str:
    # A ratio to a median this close to 0 says nothing (it swings sign with one picture).
    return f" {median / reference:5.1f}x" if abs(reference) >= RATIO_FLOOR else "    n/a"


def print_table(arms: list[Arm], reference: Arm) -> None:
    print(f"{'strength':>8} " + " ".join(f"{arm.label:>30}" for arm in arms))
    for strength in STRENGTHS:
        cells = []
        reference_median = statistics.median(scores_at(reference, strength))
        for arm in arms:
            values = scores_at(arm, strength)
            median = statistics.median(values)
            ratio = ratio_text(median, reference_median) if strength and arm is not reference else "       "
            cells.append(f"{median:+.3f} [{min(values):+.2f},{max(values):+.2f}]{ratio}".rjust(30))
        print(f"{strength:8.1f} " + " ".join(cells))


def print_report(arms: list[Arm], args) -> None:
    reference = next((arm for arm in arms if arm.name == NATIVE), arms[0])
    repeats = len(args.train_seed_list) * args.seeds
    print(f"\nconcept: a {CONCEPT_SHAPE} (tools/shape_score.py), {args.images} pictures, trigger '{TRIGGER}'; toy SD1.5, "
          f"64 px; {args.steps} steps, batch 1, rank {args.rank}, lr {args.lr:g} for every arm; sampling euler "
          f"{args.sample_steps} steps cfg {args.cfg}; {args.seeds} sampling seeds x {len(args.train_seed_list)} "
          f"training seed(s) = {repeats} pictures per cell")
    print("shape score minus the same seed's strength-0 score: median [min, max]; ratio = median / native's "
          f"median (n/a where native's is within {RATIO_FLOOR} of 0)")
    print_table(arms, reference)
    base = [value for (t, s, seed), value in reference.raw.items() if s == 0.0]
    print(f"strength-0 raw score (the base's own pictures): median {statistics.median(base):+.3f} "
          f"[{min(base):+.2f}, {max(base):+.2f}]")
    for arm in arms:
        medians = [statistics.median(scores_at(arm, s)) for s in STRENGTHS]
        rising = all(b > a for a, b in zip(medians, medians[1:], strict=False))
        seconds = statistics.median(arm.train_seconds)
        settings = ", ".join(f"{k}={v}" for k, v in arm.overrides.items()) or "defaults"
        print(f"\n{arm.label}: {settings}; rising monotonically with strength: {'yes' if rising else 'no'}; "
              f"training {seconds:.0f} s median ({seconds / args.steps * 1000:.0f} ms/step; "
              f"{', '.join(f'{s:.0f}' for s in arm.train_seconds)} s)")
        if arm.layers is not None:
            print(arm.layers.describe())
    ours = next((arm for arm in arms if arm.name == OURS), None)
    if ours is not None and reference is not ours:
        medians = [statistics.median(scores_at(ours, s)) for s in STRENGTHS]
        full, native_full = medians[-1], statistics.median(scores_at(reference, 1.0))
        met = full >= 2 * max(native_full, RATIO_FLOOR / 2) and all(b > a for a, b in zip(medians, medians[1:], strict=False))
        print(f"\ntarget (Train LoRA's defaults at strength 1.0 at least 2x native's, rising with strength): "
              f"{full:+.3f} vs native {native_full:+.3f}: {'met' if met else 'NOT met'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps of every arm (batch 1)")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=4, help="sampling seeds (one prompt each)")
    parser.add_argument("--train-seeds", type=int, default=1, help="training runs per arm (seeds 0..N-1)")
    parser.add_argument("--rank", type=int, default=None, help="default: Train LoRA's default rank")
    parser.add_argument("--lr", type=float, default=None, help="default: Train LoRA's default learning rate")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the ComfyUI server")
    parser.add_argument("--variant", action="append", default=[], help="name:key=value,... another ours arm")
    parser.add_argument("--skip", action="append", default=[], help="arm names not to run (native, ours, a variant)")
    args = parser.parse_args()
    args.train_seed_list = list(range(args.train_seeds))
    base = Path(tempfile.mkdtemp(prefix="lora_lab_efficacy_"))
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    server = ComfyServer(base, comfy_root=ensure_comfyui(), env=env)
    toy = assemble_toy_checkpoint()
    with server.start():
        (server.models_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (server.models_dir / "checkpoints" / TOY_CKPT).symlink_to(toy)
        (server.output_dir / "cells").mkdir(parents=True, exist_ok=True)
        captions = write_concept_dataset(server.input_dir / DATASET, args.images, TRIGGER)
        prompts = sample_prompts(args.seeds, captions)
        defaults = server.widget_defaults("TrainLoRA")
        args.rank = args.rank or defaults["rank"]
        args.lr = args.lr or defaults["learning_rate"]
        arms = [Arm(NATIVE, "ComfyUI TrainLoraNode"), Arm(OURS, "LoRA Lab Train LoRA")]
        arms += [parse_variant(text) for text in args.variant]
        for train_seed in args.train_seed_list:
            for arm in arms:
                if arm.name in args.skip:
                    continue
                (run_native if arm.name == NATIVE else run_ours)(server, arm, train_seed, prompts, args)
                print(f"{arm.label}, training seed {train_seed}: trained in {arm.train_seconds[-1]:.0f} s", flush=True)
    print(f"pictures: {server.output_dir / 'cells'} (prompts: {prompts})")
    print_report([arm for arm in arms if arm.raw], args)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
