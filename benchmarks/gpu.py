"""GPU training speed and memory, ready for the day a GPU is there: SD1.5 and SDXL UNets at their real sizes.

    .venv/bin/python benchmarks/gpu.py                           # everything: about 10 minutes on an H100-class card
    .venv/bin/python benchmarks/gpu.py --models sd15 --sizes 512 --steps 10
    .venv/bin/python benchmarks/gpu.py --smoke                   # tiny UNets on the CPU: checks the script, no figures

For each model (SD1.5, SDXL; ComfyUI's own model classes with seeded random weights, nothing downloaded), each
size (512, 1024 px), batch 1, bf16 base weights and bf16 autocast, with and without gradient checkpointing,
three arms train the same UNet in their own child process:

* ``lora_lab``: LoRA Lab's loop (``train_lora``) on the ComfyUI model, target "attention" (each spatial
  transformer's proj_in/out, attention and feed-forward layers), rank 16, AdamW;
* ``diffusers``: a bare diffusers ``UNet2DConditionModel`` of the same architecture with peft LoRA on the same
  layers (equal adapter parameter counts: tests/integration/test_gpu_benchmark_arms.py), eps loss, AdamW:
  the floor;
* ``native``: ComfyUI's own ``TrainLoraNode`` (its defaults adapt every weight of 2+ dimensions and train a
  difference on every bias and norm: more parameters; the table prints each arm's count).

Printed per arm: trainable parameters, seconds per step (median and min–max over the timed steps after a
warm-up, each step ended by ``torch.cuda.synchronize``), steps/s, peak CUDA memory (``max_memory_allocated``
from just before training to its end, base weights included, the same window in every arm), and for LoRA Lab
the memory estimate TrainLoRA shows before its first step, with measured / estimated (to calibrate the
activation constants in ``trainer_core/training/memory_estimate.py``).

Published anchors: SD1.5 at 512, batch 1, about 1.7 it/s on an RTX 3090 (kohya); SDXL at 1024, batch 1, cached
latents, 1.1–1.5 s/it on 3090/4090-class cards. Without CUDA (and without ``--smoke``) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_models  # noqa: E402

ARMS = ("lora_lab", "diffusers", "native")
RANK = 16
LEARNING_RATE = 1e-4


def import_comfy(smoke: bool) -> None:
    from tools.setup_comfyui import comfyui_root

    root = comfyui_root()
    sys.path.insert(0, str(root))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    args.cpu = smoke
    import comfy.model_management  # noqa: F401  (reads args.cpu once)


class StepClock:
    """Per-step wall times, each step ended by a device synchronise, and the peak device memory."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stamps: list[float] = []
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.stamps.append(time.perf_counter())

    def step(self, *_: object, **__: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())

    def figures(self, warmup: int) -> dict:
        times = [b - a for a, b in zip(self.stamps[:-1], self.stamps[1:], strict=True)][warmup:]
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else float("nan")
        return {"s_per_step": statistics.median(times), "min": min(times), "max": max(times), "peak_gib": peak,
                "timed_steps": len(times)}


def run_lora_lab(args) -> dict:
    from comfy_inproc import load_pack

    load_pack()
    from lora_lab.nodes import bridge
    from lora_lab.nodes.train_progress import memory_estimate_for
    from lora_lab.trainer_core.adapters.config import LoRAConfig
    from lora_lab.trainer_core.data.dataset import DatasetOptions, load_dataset
    from lora_lab.trainer_core.training.config import TrainingConfig
    from lora_lab.trainer_core.training.loop import train_lora

    from tools.synthetic_dataset import make_shapes_dataset

    patcher = gpu_models.comfy_patcher(args.model, args.smoke, torch.bfloat16)
    bridge.load_for_training(patcher, unload_others=False)
    denoiser = bridge.ComfyDenoiser(patcher)
    lora = LoRAConfig(rank=RANK, alpha=RANK, target="attention")
    training = TrainingConfig(steps=args.steps + args.warmup, learning_rate=LEARNING_RATE, batch_size=1,
                              mixed_precision="bf16", gradient_checkpointing=args.checkpointing)
    estimate = memory_estimate_for(denoiser, None, lora, training, "AdamW", args.size, denoiser.device)
    with tempfile.TemporaryDirectory() as folder:
        make_shapes_dataset(Path(folder), count=2, size=args.size)
        dataset = load_dataset(folder, DatasetOptions(resolution=args.size, bucket_step=min(64, args.size)))
        clock = StepClock(denoiser.device)
        result = train_lora(denoiser, gpu_models.FixedText(args.model), gpu_models.PooledLatents(), dataset, lora,
                            training, on_step=clock.step)
    trainable = sum(t.numel() for t in result.weights.values() if t.ndim >= 2)
    # The clock's first interval also holds encoding and setting up: it is dropped with the warm-up.
    return {**clock.figures(args.warmup), "trainable": trainable, "estimate_gib": estimate.total / 2**30}


def run_diffusers(args) -> dict:
    from peft import LoraConfig, inject_adapter_in_model

    device = torch.device("cpu" if args.smoke else "cuda")
    unet = gpu_models.diffusers_unet(args.model, args.smoke, torch.bfloat16, device)
    unet.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=gpu_models.DIFFUSERS_ATTENTION_TARGETS),
                            unet)
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for param in params:
        param.data = param.data.float()
    if args.checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, 0).float().to(device)
    (tokens, width), pooled = gpu_models.CONTEXT[args.model]
    context = torch.randn(1, tokens, width, device=device)
    added = None if pooled is None else {"text_embeds": torch.randn(1, pooled, device=device),
                                         "time_ids": torch.tensor([[args.size, args.size, 0, 0, args.size, args.size]],
                                                                  device=device, dtype=torch.float32)}
    latents = torch.randn(2, 4, args.size // 8, args.size // 8, device=device)
    clock = StepClock(device)
    for step in range(args.steps + args.warmup):
        x0 = latents[step % 2 : step % 2 + 1]
        t = torch.randint(0, 1000, (1,), device=device)
        noise = torch.randn_like(x0)
        noisy = alphas[t].sqrt().view(-1, 1, 1, 1) * x0 + (1 - alphas[t]).sqrt().view(-1, 1, 1, 1) * noise
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = unet(noisy, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
        loss = torch.nn.functional.mse_loss(out.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clock.step()
    return {**clock.figures(args.warmup), "trainable": sum(p.numel() for p in params)}


def run_native(args) -> dict:
    import comfy.utils
    from comfy_extras.nodes_train import TrainLoraNode

    patcher = gpu_models.comfy_patcher(args.model, args.smoke, torch.bfloat16)
    latents = [{"samples": torch.randn(1, 4, args.size // 8, args.size // 8)} for _ in range(2)]
    positive = gpu_models.comfy_conditioning(args.model, 1) * 2
    device = torch.device(patcher.load_device)
    clock = StepClock(device)
    comfy.utils.set_progress_bar_global_hook(lambda *a, **k: clock.step())
    output = TrainLoraNode.execute(
        model=[patcher], latents=latents, positive=[positive], batch_size=[1], steps=[args.steps + args.warmup],
        grad_accumulation_steps=[1], learning_rate=[LEARNING_RATE], rank=[RANK], optimizer=["AdamW"],
        loss_function=["MSE"], seed=[0], training_dtype=["bf16"], lora_dtype=["fp32"], algorithm=["LoRA"],
        gradient_checkpointing=[args.checkpointing], existing_lora=["[None]"],
    )
    lora = output.result[1] if hasattr(output, "result") else output[1]
    trainable = sum(t.numel() for t in lora.values() if torch.is_tensor(t))
    return {**clock.figures(args.warmup), "trainable": trainable}


VARIANTS = {"lora_lab": run_lora_lab, "diffusers": run_diffusers, "native": run_native}


def child(args) -> int:
    import_comfy(args.smoke)
    torch.manual_seed(0)
    print("RESULT " + json.dumps(VARIANTS[args.variant](args)), flush=True)
    return 0


def measure(args, model: str, size: int, checkpointing: bool, arm: str) -> dict:
    command = [sys.executable, __file__, "--variant", arm, "--model", model, "--size", str(size), "--steps",
               str(args.steps), "--warmup", str(args.warmup)] + (["--checkpointing"] if checkpointing else []) + (
               ["--smoke"] if args.smoke else [])
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        tail = (completed.stderr or completed.stdout)[-1500:]
        return {"error": tail.strip().splitlines()[-1] if tail.strip() else f"exit {completed.returncode}"}
    return json.loads(lines[-1][len("RESULT "):])


def print_row(model: str, size: int, checkpointing: bool, arm: str, result: dict) -> None:
    label = f"{model:5} {size:5} {'on' if checkpointing else 'off':5} {arm:9}"
    if "error" in result:
        print(f"{label} failed: {result['error']}", flush=True)
        return
    estimate = result.get("estimate_gib")
    ratio = f"{result['peak_gib'] / estimate:.2f}" if estimate else "-"
    print(f"{label} {result['trainable'] / 1e6:9.2f} {result['s_per_step']:8.3f} ({result['min']:.3f}–{result['max']:.3f})"
          f" {1 / result['s_per_step']:8.2f} {result['peak_gib']:9.2f} {estimate or float('nan'):9.2f} {ratio:>8}",
          flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(gpu_models.COMFY_CLASS), default=["sd15", "sdxl"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--steps", type=int, default=20, help="timed steps per arm")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny UNets at 64 px on the CPU: checks the script only")
    parser.add_argument("--variant", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return child(args)
    if not args.smoke and not torch.cuda.is_available():
        print("benchmarks/gpu.py measures CUDA training and this machine has no CUDA GPU (torch.cuda.is_available() is "
              "False): nothing measured. Run it on a machine with an NVIDIA GPU, or --smoke to check the script on "
              "the CPU.")
        return 0
    sizes = [64] if args.smoke else args.sizes
    where = "CPU, tiny UNets (smoke run: the figures mean nothing)" if args.smoke else torch.cuda.get_device_name()
    print(f"{where}; batch 1, bf16 weights and autocast, rank {RANK}, AdamW lr {LEARNING_RATE}, {args.steps} timed "
          f"steps after {args.warmup} warm-up, torch {torch.__version__}", flush=True)
    print(f"{'model':5} {'px':>5} {'ckpt':5} {'arm':9} {'params M':>9} {'s/step (min–max)':>24} {'steps/s':>8} "
          f"{'peak GiB':>9} {'est. GiB':>9} {'peak/est':>8}", flush=True)
    failed = False
    for model in args.models:
        for size in sizes:
            for checkpointing in (False, True):
                for arm in args.arms:
                    result = measure(args, model, size, checkpointing, arm)
                    failed |= "error" in result
                    print_row(model, size, checkpointing, arm, result)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
