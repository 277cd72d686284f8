"""Where the strength sweep's time goes, next to the same images made with plain KSampler: both in ONE ComfyUI
process (imported, CPU), interleaved, with counts of the work each does.

    .venv/bin/python benchmarks/sweep_profile.py [--rounds 3] [--steps 8] [--size 64] [--threads 1]

A. TestLoRAStrengthSweep's ``execute`` (7 strengths x 4 prompts, the default one prompt at a time) on a LoRA
   trained first (a few steps, not timed); B. the plain arm of ``benchmarks/sweep.py`` called the way its graph
   runs: the 4 prompts and the empty negative encoded once, then 28 x ``common_ksampler`` + VAE decode +
   ``SaveImage``. Per arm: wall and CPU seconds (median, min–max), and per run the calls and seconds of the
   work counted: model loads (``load_models_gpu``), LoRA weights patched and restored, LoRA loads, CLIP
   encodes, sampler calls, VAE decodes, grid drawing, PNG writes and the sweep's scoring. The counters wrap
   ComfyUI's and LoRA Lab's functions in this process only; their seconds nest (a sampler call includes its
   model load).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "helpers"))
sys.path.insert(0, str(REPO / "benchmarks"))
from common import fix_threads, spread  # noqa: E402
from sweep import PROMPTS, STRENGTHS  # noqa: E402

COUNTS: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])


def counted(owner, attribute: str, label: str) -> None:
    """Wrap ``owner.attribute`` so that its calls and seconds add up under ``label``."""
    original = getattr(owner, attribute)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            COUNTS[label][0] += 1
            COUNTS[label][1] += time.perf_counter() - started

    setattr(owner, attribute, wrapper)


def install_counters() -> None:
    import importlib

    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    from lora_lab.nodes import grid_render, sampler, strength_sweep, sweep_scoring
    from PIL import Image

    comfy_nodes = importlib.import_module("nodes")
    counted(comfy.model_management, "load_models_gpu", "model loads (load_models_gpu)")
    counted(comfy.model_patcher.ModelPatcher, "patch_weight_to_device", "weights patched (patch_weight_to_device)")
    counted(comfy.model_patcher.ModelPatcher, "unpatch_model", "unpatch_model calls")
    counted(comfy.sd, "load_lora_for_models", "LoRA loads (load_lora_for_models)")
    counted(comfy.sd.CLIP, "encode_from_tokens", "CLIP encodes")
    counted(comfy_nodes, "common_ksampler", "sampler calls (common_ksampler)")
    counted(comfy.sd.VAE, "decode", "VAE decodes")
    counted(grid_render, "labelled_grid", "grid drawing")
    counted(Image.Image, "save", "PNG writes")
    counted(sweep_scoring, "score_sweep", "sweep scoring")
    counted(grid_render, "check_fit", "LoRA fit check (check_fit)")
    counted(grid_render, "finish_grid", "grid finished and saved (finish_grid)")
    counted(sampler, "encode_prompt", "prompts encoded (encode_prompt)")
    counted(strength_sweep, "tensor_data_hash", "LoRA hash (tensor_data_hash)")


def setup(args, base: Path):
    """ComfyUI in this process with its folders under ``base``; the tiny checkpoint; a LoRA trained briefly."""
    from comfy_inproc import import_comfy, load_pack

    comfy_root = import_comfy()
    load_pack()
    import comfy.sd
    import folder_paths
    import torch
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.adapters.config import LoRAConfig
    from lora_lab.trainer_core.data.dataset import DatasetOptions, load_dataset
    from lora_lab.trainer_core.training.config import TrainingConfig
    from lora_lab.trainer_core.training.loop import train_lora

    from tools.synthetic_dataset import make_shapes_dataset
    from tools.tiny_models import build_tiny_sd15_checkpoint

    folder_paths.set_output_directory(str(base / "output"))
    checkpoint = base / "tiny.safetensors"
    build_tiny_sd15_checkpoint(checkpoint, seed=0, comfy_root=comfy_root)
    folder = make_shapes_dataset(base / "rings", count=6, size=64)
    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=True, output_clip=True)
        patcher = model.clone()
        bridge.load_for_training(patcher, unload_others=False)
        dataset = load_dataset(folder, DatasetOptions(resolution=64, bucket_step=64))
        result = train_lora(
            bridge.ComfyDenoiser(patcher), bridge.ComfyTextEncoder(clip), bridge.ComfyLatentCodec(vae, patcher),
            dataset, LoRAConfig(rank=8, alpha=8), TrainingConfig(steps=20, learning_rate=5e-4),
            caption_for=dataset.caption_for, key_namer=bridge.kohya_key_namer(patcher),
            metadata={"ss_trigger_word": "sks", "ss_steps": "20"})
    return model, clip, vae, result.weights


def sweep_arm(model, clip, vae, lora, args, seed: int) -> None:
    from lora_lab.nodes.strength_sweep import TestLoRAStrengthSweep

    TestLoRAStrengthSweep.execute(
        model=model, clip=clip, vae=vae, lora_name="", prompts="\n".join(PROMPTS), negative="",
        strengths=", ".join(map(str, STRENGTHS)), include_baseline=False, clip_strength_mode="same as model",
        clip_strength=1.0, seed=seed, steps=args.steps, cfg=4.0, sampler_name="euler", scheduler="normal",
        width=args.size, height=args.size, lora=lora)


def plain_arm(model, clip, vae, lora, args, seed: int) -> None:
    import importlib

    import torch

    comfy_nodes = importlib.import_module("nodes")
    negative = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
    positives = [comfy_nodes.CLIPTextEncode().encode(clip, prompt)[0] for prompt in PROMPTS]
    for index in range(len(STRENGTHS)):
        for number, positive in enumerate(positives):
            latent = {"samples": torch.zeros([1, 4, args.size // 8, args.size // 8])}
            (samples,) = comfy_nodes.common_ksampler(model, seed * 100 + index, args.steps, 4.0, "euler", "normal",
                                                     positive, negative, latent)
            images = vae.decode(samples["samples"])
            comfy_nodes.SaveImage().save_images(images, f"plain_{index}_{number}")


ARMS = {"A. sweep (one prompt at a time)": sweep_arm, "B. plain KSampler images": plain_arm}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a busy machine more threads mostly wait for each other)")
    args = parser.parse_args()
    fix_threads(args.threads)
    import torch

    base = Path(tempfile.mkdtemp(prefix="lora_lab_sweep_profile_"))
    model, clip, vae, lora = setup(args, base)
    install_counters()
    wall: dict[str, list[float]] = {name: [] for name in ARMS}
    cpu: dict[str, list[float]] = {name: [] for name in ARMS}
    counts: dict[str, dict[str, list[float]]] = {}
    with torch.inference_mode():  # as ComfyUI runs every node
        for arm in ARMS.values():  # warm-up, not timed
            arm(model, clip, vae, lora, args, 0)
        for round_number in range(args.rounds):
            for name, arm in ARMS.items():
                COUNTS.clear()
                started, started_cpu = time.perf_counter(), time.process_time()
                arm(model, clip, vae, lora, args, 1 + round_number)
                wall[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - started_cpu)
                counts[name] = {label: list(value) for label, value in COUNTS.items()}
    cells = len(STRENGTHS) * len(PROMPTS)
    print(f"tiny SD1.5, {args.size}x{args.size}, {args.steps} steps, {cells} images, {args.threads} threads, "
          f"{args.rounds} interleaved rounds in one process (median, min–max)")
    floor = {label: statistics.median(times["B. plain KSampler images"]) for label, times in (("wall", wall), ("CPU", cpu))}
    for name in ARMS:
        print(f"{name:34} wall {spread(wall[name], digits=2):>20} s ({statistics.median(wall[name]) / floor['wall']:.2f}x B)"
              f"   CPU {spread(cpu[name], digits=2):>20} s ({statistics.median(cpu[name]) / floor['CPU']:.2f}x B)")
    labels = sorted({label for table in counts.values() for label in table})
    print(f"\nwork per run (last round): calls, seconds   {'  '.join(f'{n[:34]:>34}' for n in ARMS)}")
    for label in labels:
        cells_text = "  ".join(f"{counts[n].get(label, [0, 0.0])[0]:>22.0f} {counts[n].get(label, [0, 0.0])[1]:9.3f} s"
                               for n in ARMS)
        print(f"{label:44} {cells_text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
