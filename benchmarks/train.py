"""Training speed and memory: LoRA Lab's TrainLoRA against ComfyUI's own TrainLoraNode and a bare
peft loop (the floor), on the same tiny SD1.5 checkpoint, images, resolution, rank, batch, dtype
and steps.

    .venv/bin/python benchmarks/train.py [--steps 60] [--rank 8] [--size 64] [--repeats 5] [--threads 4]

Arms: ComfyUI's TrainLoraNode (LoRA on every weight of 2+ dimensions, convolutions and time embedding
included, plus a trained difference on every bias and norm); LoRA Lab with its default target; LoRA Lab on
the layers closest to native's (every linear layer, ``all_linear``, and the ResBlock convolutions at the same
rank, ``conv_rank``); LoRA Lab's default arm again as a process's first training run (the libraries Train LoRA
imports on first use, peft and diffusers' schedules, imported inside the memory window); the bare peft loop on LoRA Lab's default layers. Every arm prints its trainable
parameter count and what it trains, so the ratios say what they compare.

Each arm runs ``--repeats`` times in its own child process (interleaved, so a machine getting busier weighs on
all alike) on a fixed number of threads; seconds per step are timed over the steps after a warm-up; peak
memory is the growth of the process's resident set over the same window in every arm: encoding the images
and captions, then training (each arm's libraries imported before it: ``import_training_libraries``).
Printed: median and min–max over the runs, and the ratios of the medians against ComfyUI's trainer and
against the floor. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "helpers"))
sys.path.insert(0, str(REPO / "benchmarks"))
from common import (  # noqa: E402
    MemoryPeak,
    add_training_run_arguments,
    child_arguments,
    default_threads,
    fix_threads,
    median,
    run_repeated,
    seconds_per_step,
    spread,
)


def prepare(args):
    """Import ComfyUI in this process, build/load the tiny checkpoint and the dataset."""
    from comfy_inproc import import_comfy, load_pack

    comfy_root = import_comfy()
    load_pack()
    from tools.synthetic_dataset import make_shapes_dataset
    from tools.tiny_models import build_tiny_sd15_checkpoint

    cache = REPO / ".cache" / "benchmarks"
    cache.mkdir(parents=True, exist_ok=True)
    checkpoint = cache / "tiny_sd15.safetensors"
    if not checkpoint.exists():
        build_tiny_sd15_checkpoint(checkpoint, seed=0, comfy_root=comfy_root)
    dataset = make_shapes_dataset(cache / "dataset", count=args.images, size=args.size)
    return checkpoint, dataset


def import_training_libraries() -> None:
    """Import what Train LoRA imports on its first run (peft for the adapter layers, diffusers' schedules), before
    the memory window, as the other arms import theirs: a module import is paid once per ComfyUI process, not by
    each training run (measured: about 55 MiB of resident memory at the first run, nothing at the next)."""
    import diffusers.optimization  # noqa: F401
    import peft  # noqa: F401


def _lora_lab(args, target: str, conv_rank: int = 0, first_run: bool = False, observe=None) -> dict:
    import torch

    checkpoint, folder = prepare(args)
    if not first_run:
        import_training_libraries()
    import comfy.sd
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.adapters.config import LoRAConfig
    from lora_lab.trainer_core.data.dataset import DatasetOptions, load_dataset
    from lora_lab.trainer_core.training.config import TrainingConfig
    from lora_lab.trainer_core.training.loop import train_lora

    with torch.inference_mode():  # as ComfyUI runs every node
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=True, output_clip=True)
        dataset = load_dataset(folder, DatasetOptions(resolution=args.size, bucket_step=min(64, args.size)))
        patcher = model.clone()
        bridge.load_for_training(patcher, unload_others=False)
        stamps: list[float] = []

        def on_step(report) -> None:
            stamps.append(time.perf_counter())
            if observe is not None:
                observe(len(stamps))

        with MemoryPeak() as memory:  # encoding (inside train_lora) and training, as in every arm
            result = train_lora(
                bridge.ComfyDenoiser(patcher), bridge.ComfyTextEncoder(clip), bridge.ComfyLatentCodec(vae, patcher),
                dataset, LoRAConfig(rank=args.rank, alpha=args.rank, target=target, conv_rank=conv_rank,
                                    conv_alpha=float(args.rank)),
                TrainingConfig(steps=args.steps + args.warmup, learning_rate=1e-4, batch_size=args.batch,
                               mixed_precision="fp32", min_snr_gamma=5.0),
                caption_for=dataset.caption_for, key_namer=bridge.kohya_key_namer(patcher),
                on_step=on_step,
            )
    trained = {key.split(".")[0] for key in result.weights}
    conv = f", conv_rank {conv_rank}" if conv_rank else ""
    return {"s_per_step": seconds_per_step(stamps, args.warmup), "peak_mib": memory.mib,
            "trainable": sum(t.numel() for k, t in result.weights.items() if not k.endswith(".alpha")),
            "trains": f"LoRA on {len(trained)} layers (target {target}{conv})"}


def run_lora_lab(args, observe=None) -> dict:
    """``observe(steps_done)``, when given, is called after each step (benchmarks/train_profile.py starts and
    stops its profilers there)."""
    return _lora_lab(args, args.target, observe=observe)


def run_lora_lab_first_run(args) -> dict:
    """The default arm as the first training run in a fresh ComfyUI process: peft and diffusers' schedules are
    imported inside the memory window, where Train LoRA first needs them."""
    return _lora_lab(args, args.target, first_run=True)


def run_lora_lab_like_native(args) -> dict:
    """The layers closest to what ComfyUI's trainer adapts: every linear layer of the blocks and the ResBlock
    convolutions (LoCon) at the same rank. (Native also adapts the UNet's input/output convs and trains every
    bias and norm in full: the parameter counts printed say how close this is.)"""
    return _lora_lab(args, "all_linear", conv_rank=args.rank)


def _native_inputs(args, folder, clip, vae):
    import numpy as np
    import torch
    from PIL import Image

    images = sorted(folder.glob("*.png"))
    pixels = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) / 255 for p in images]))
    encoded = vae.encode(pixels)
    # One dict per image: ComfyUI's trainer only handles a list of latents (a single batch trips it).
    latents = [{"samples": encoded[i : i + 1]} for i in range(encoded.shape[0])]
    positive = []
    for path in images:
        positive += clip.encode_from_tokens_scheduled(clip.tokenize(path.with_suffix(".txt").read_text()))
    return latents, positive


def run_comfy_native(args) -> dict:
    import torch

    checkpoint, folder = prepare(args)
    import comfy.sd
    import comfy.utils
    from comfy_extras.nodes_train import TrainLoraNode

    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=True, output_clip=True)
        stamps: list[float] = []
        comfy.utils.set_progress_bar_global_hook(lambda *a, **k: stamps.append(time.perf_counter()))
        started = time.perf_counter()
        with MemoryPeak() as memory:  # encoding and training, as in every arm
            latents, positive = _native_inputs(args, folder, clip, vae)
            output = TrainLoraNode.execute(
                model=[model], latents=latents, positive=[positive], batch_size=[args.batch],
                steps=[args.steps + args.warmup], grad_accumulation_steps=[1], learning_rate=[1e-4], rank=[args.rank],
                optimizer=["AdamW"], loss_function=["MSE"], seed=[0], training_dtype=["fp32"], lora_dtype=["fp32"],
                algorithm=["LoRA"], gradient_checkpointing=[False], existing_lora=["[None]"],
            )
        total = time.perf_counter() - started
    lora = output.result[1]
    low_rank = {key.split(".lora_")[0] for key in lora if ".lora_" in key}
    diffs = {key for key in lora if key.endswith(".diff") or key.endswith(".diff_b")}
    figures = {"peak_mib": memory.mib, "trainable": sum(t.numel() for t in lora.values() if torch.is_tensor(t)),
               "trains": f"LoRA on {len(low_rank)} layers (every weight of 2+ dims) + {len(diffs)} bias/norm diffs"}
    if len(stamps) > args.warmup + 1:
        return {"s_per_step": seconds_per_step(stamps, args.warmup), **figures}
    # A ComfyUI whose trainer reports no progress: the whole call over its steps.
    return {"s_per_step": total / (args.steps + args.warmup), **figures}


def run_peft_floor(args, observe=None) -> dict:
    """The least a LoRA step can cost on this UNet: peft layers on LoRA Lab's layers, eps loss, AdamW, nothing else.
    ``observe`` as in ``run_lora_lab``."""
    import numpy as np
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    checkpoint, folder = prepare(args)
    import comfy.sd
    from lora_lab.trainer_core.adapters.inject import find_target_modules
    from PIL import Image

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=True, output_clip=True)
    images = sorted(folder.glob("*.png"))
    unet = model.model.diffusion_model
    unet.requires_grad_(False)
    targets = find_target_modules(unet, args.target)
    inject_adapter_in_model(LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=targets), unet)
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    sigmas = model.model.model_sampling.sigmas
    generator = torch.Generator().manual_seed(0)
    stamps = []
    with MemoryPeak() as memory:  # encoding and training, as in every arm
        with torch.no_grad():
            pixels = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) / 255
                                                for p in images]))
            latents = model.model.process_latent_in(vae.encode(pixels)).float()
            context = torch.cat([clip.encode_from_tokens_scheduled(clip.tokenize(p.with_suffix(".txt").read_text()))[0][0]
                                 for p in images])
        for _ in range(args.steps + args.warmup):
            index = torch.randint(0, len(images), (args.batch,), generator=generator)
            t = torch.randint(0, 1000, (args.batch,), generator=generator)
            x0, noise = latents[index], torch.randn(latents[index].shape, generator=generator)
            sigma = sigmas[t].view(-1, 1, 1, 1)
            noisy = (x0 + sigma * noise) / (sigma**2 + 1).sqrt()
            out = unet(noisy, t.float(), context=context[index])
            loss = torch.nn.functional.mse_loss(out, noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            stamps.append(time.perf_counter())
            if observe is not None:
                observe(len(stamps))
    return {"s_per_step": seconds_per_step(stamps, args.warmup), "peak_mib": memory.mib,
            "trainable": sum(p.numel() for p in params), "trains": f"LoRA on {len(targets)} layers (target {args.target})"}


VARIANTS = {"comfy_native": run_comfy_native, "lora_lab": run_lora_lab, "lora_lab_first_run": run_lora_lab_first_run,
            "lora_lab_like_native": run_lora_lab_like_native, "peft_floor": run_peft_floor}
LABELS = {
    "comfy_native": "ComfyUI TrainLoraNode",
    "lora_lab": "LoRA Lab TrainLoRA",
    "lora_lab_first_run": "LoRA Lab, 1st run in process",
    "lora_lab_like_native": "LoRA Lab, native's layers",
    "peft_floor": "bare peft loop (floor)",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_training_run_arguments(parser)
    parser.add_argument("--repeats", type=int, default=5, help="runs per arm, interleaved")
    parser.add_argument("--threads", type=int, default=default_threads(), help="torch threads in every arm")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        fix_threads(args.threads)
        print("RESULT " + json.dumps(VARIANTS[args.variant](args)))
        return 0
    results = run_repeated(__file__, VARIANTS, args.repeats, child_arguments(sys.argv[1:]))
    if results is None:
        return 1
    print(f"tiny SD1.5, {args.size}x{args.size}, rank {args.rank}, batch {args.batch}, fp32, {args.steps} timed steps "
          f"after {args.warmup} warm-up, CPU, {args.threads} threads, {args.repeats} runs per arm (median, min–max); "
          "peak memory = growth over encoding + training in every arm")
    native = median(results["comfy_native"], "s_per_step")
    floor = median(results["peft_floor"], "s_per_step")
    print(f"{'trainer':28} {'trainable':>10} {'ms/step':>20} {'steps/s vs native':>18} {'time vs floor':>14} "
          f"{'peak MiB':>20}  trains")
    for name, runs in results.items():
        step = median(runs, "s_per_step")
        print(f"{LABELS[name]:28} {runs[0]['trainable']:10,} {spread([r['s_per_step'] for r in runs], 1000):>20} "
              f"{native / step:17.2f}x {step / floor:13.2f}x {spread([r['peak_mib'] for r in runs]):>20}  {runs[0]['trains']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
