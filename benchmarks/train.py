"""Training speed and memory: LoRA Lab's TrainLoRA against ComfyUI's own TrainLoraNode and a bare
peft loop (the floor), on the same tiny SD1.5 checkpoint, images, resolution, rank, batch, dtype
and steps.

    .venv/bin/python benchmarks/train.py [--steps 60] [--rank 8] [--size 64]

Each trainer runs in its own child process of this session (so one's peak memory does not hide
another's); seconds per step are timed over the steps after a warm-up, peak memory is the growth of
the process's peak resident set during training (after the model is loaded and the data encoded).
Prints a table and the ratios against ComfyUI's trainer. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "helpers"))


class MemoryPeak:
    """Peak growth of this process's resident memory while the block runs (sampled every 2 ms)."""

    def __enter__(self) -> MemoryPeak:
        import threading

        self.start = self.peak = self._rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * resource.getpagesize()

    def _sample(self) -> None:
        while not self._done.wait(0.002):
            self.peak = max(self.peak, self._rss())


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


def run_lora_lab(args) -> dict:
    import torch

    checkpoint, folder = prepare(args)
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

        def on_step(report):
            stamps.append(time.perf_counter())

        with MemoryPeak() as memory:
            train_lora(
            bridge.ComfyDenoiser(patcher), bridge.ComfyTextEncoder(clip), bridge.ComfyLatentCodec(vae, patcher),
                dataset, LoRAConfig(rank=args.rank, alpha=args.rank, target=args.target),
                TrainingConfig(steps=args.steps + args.warmup, learning_rate=1e-4, batch_size=args.batch,
                               mixed_precision="fp32", min_snr_gamma=5.0),
                caption_for=dataset.caption_for, key_namer=bridge.kohya_key_namer(patcher), on_step=on_step,
            )
    return {"s_per_step": seconds_per_step(stamps, args.warmup), "peak_mib": memory.mib}


def run_comfy_native(args) -> dict:
    import numpy as np
    import torch

    checkpoint, folder = prepare(args)
    import comfy.sd
    import comfy.utils
    from comfy_extras.nodes_train import TrainLoraNode
    from PIL import Image

    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=True, output_clip=True)
        images = sorted(folder.glob("*.png"))
        pixels = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) / 255 for p in images]))
        encoded = vae.encode(pixels)
        # One dict per image: ComfyUI's trainer only handles a list of latents (a single batch trips it).
        latents = [{"samples": encoded[i : i + 1]} for i in range(encoded.shape[0])]
        positive = []
        for path in images:
            text = path.with_suffix(".txt").read_text()
            positive += clip.encode_from_tokens_scheduled(clip.tokenize(text))
        stamps: list[float] = []

        def hook(value, total, preview, node_id=None, prompt_id=None):
            stamps.append(time.perf_counter())

        comfy.utils.set_progress_bar_global_hook(hook)
        started = time.perf_counter()
        with MemoryPeak() as memory:
            TrainLoraNode.execute(
            model=[model], latents=latents, positive=[positive], batch_size=[args.batch],
            steps=[args.steps + args.warmup], grad_accumulation_steps=[1], learning_rate=[1e-4], rank=[args.rank],
            optimizer=["AdamW"], loss_function=["MSE"], seed=[0], training_dtype=["fp32"], lora_dtype=["fp32"],
                algorithm=["LoRA"], gradient_checkpointing=[False], existing_lora=["[None]"],
            )
        total = time.perf_counter() - started
    if len(stamps) > args.warmup + 1:
        return {"s_per_step": seconds_per_step(stamps, args.warmup), "peak_mib": memory.mib}
    # A ComfyUI whose trainer reports no progress: the whole call over its steps.
    return {"s_per_step": total / (args.steps + args.warmup), "peak_mib": memory.mib}


def run_peft_floor(args) -> dict:
    """The least a LoRA step can cost on this UNet: peft layers, eps loss, AdamW, nothing else."""
    import numpy as np
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    checkpoint, folder = prepare(args)
    import comfy.sd
    from lora_lab.trainer_core.adapters.inject import find_target_modules
    from PIL import Image

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=True, output_clip=True)
    images = sorted(folder.glob("*.png"))
    with torch.no_grad():
        pixels = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) / 255 for p in images]))
        latents = model.model.process_latent_in(vae.encode(pixels)).float()
        context = torch.cat([clip.encode_from_tokens_scheduled(clip.tokenize(p.with_suffix(".txt").read_text()))[0][0]
                             for p in images])
    unet = model.model.diffusion_model
    unet.requires_grad_(False)
    targets = find_target_modules(unet, args.target)
    inject_adapter_in_model(LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=targets), unet)
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    sigmas = model.model.model_sampling.sigmas
    generator = torch.Generator().manual_seed(0)
    stamps = []
    memory = MemoryPeak().__enter__()
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
    memory.__exit__()
    return {"s_per_step": seconds_per_step(stamps, args.warmup), "peak_mib": memory.mib}


def seconds_per_step(stamps: list[float], warmup: int) -> float:
    timed = stamps[warmup:]
    return (timed[-1] - timed[0]) / (len(timed) - 1)


VARIANTS = {"comfy_native": run_comfy_native, "lora_lab": run_lora_lab, "peft_floor": run_peft_floor}
LABELS = {
    "comfy_native": "ComfyUI TrainLoraNode",
    "lora_lab": "LoRA Lab TrainLoRA",
    "peft_floor": "bare peft loop (floor)",
}


def run_variants(script: str, names, labels=None) -> dict | None:
    """Each variant in its own process (``script --variant NAME`` + this run's arguments), so peak
    memory and warm caches do not leak between them; their ``RESULT {json}`` lines, or None after
    printing the failure."""
    results = {}
    for name in names:
        command = [sys.executable, script, "--variant", name] + sys.argv[1:]
        completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
        if completed.returncode != 0 or not lines:
            print(f"{(labels or {}).get(name, name)} failed:\n{completed.stderr[-3000:]}", file=sys.stderr)
            return None
        results[name] = json.loads(lines[-1][len("RESULT ") :])
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--target", default="attention", help="LoRA Lab / floor target layers")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(VARIANTS[args.variant](args)))
        return 0
    results = run_variants(__file__, VARIANTS, LABELS)
    if results is None:
        return 1
    reference = results["comfy_native"]
    print(f"tiny SD1.5, {args.size}x{args.size}, rank {args.rank}, batch {args.batch}, fp32, "
          f"{args.steps} timed steps after {args.warmup} warm-up, CPU")
    print(f"{'trainer':28} {'ms/step':>9} {'steps/s vs native':>18} {'peak MiB':>9} {'memory vs native':>17}")
    for name, result in results.items():
        speed = reference["s_per_step"] / result["s_per_step"]
        memory = result["peak_mib"] / reference["peak_mib"] if reference["peak_mib"] else float("nan")
        print(f"{LABELS[name]:28} {1000 * result['s_per_step']:9.1f} {speed:17.2f}x {result['peak_mib']:9.1f} "
              f"{memory:16.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
