"""What each memory option of Train LoRA saves and costs, against 'as loaded' measured in the same run.

    .venv/bin/python benchmarks/memory_options.py [--steps 30] [--rank 8] [--size 64] [--batch 1] [--repeats 5]

Each variant trains the tiny SD1.5 checkpoint in its own child process, repeated (``benchmarks/common.py``'s
timing and peak-memory helpers), through the same bridge calls Train LoRA makes. Printed per variant:
milliseconds per step, peak growth of resident memory during training, the bytes of the weights of
the network that trains, and the final loss (a fixed seed, so the variants are comparable). On a CPU the
weights live in RAM either way, so 'peak MiB' shows activations and optimizer state, and
optimizer_state_on_cpu has nothing to move; on a GPU the base-weight bytes are what leaves the GPU.
Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import common  # noqa: E402
from train import import_training_libraries, prepare  # noqa: E402

VARIANTS = {
    "as_loaded": {},
    "gradient_checkpointing": {"gradient_checkpointing": True},
    "base_bf16": {"base_weights": "bf16"},
    "base_fp8": {"base_weights": "fp8_e4m3fn"},
    "base_fp8_checkpointing": {"base_weights": "fp8_e4m3fn", "gradient_checkpointing": True},
    "optimizer_state_on_cpu": {"optimizer_state_on_cpu": True},
    "ema_0.999": {"ema_decay": 0.999},
}


def run(args, options: dict) -> dict:
    import torch

    checkpoint, folder = prepare(args)
    import_training_libraries()  # a one-time import is not what a memory option saves or costs
    import comfy.sd
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.adapters.config import LoRAConfig
    from lora_lab.trainer_core.data.dataset import DatasetOptions, load_dataset
    from lora_lab.trainer_core.training.config import TrainingConfig
    from lora_lab.trainer_core.training.loop import train_lora
    from lora_lab.trainer_core.training.memory import stored_weight_bytes

    options = dict(options)
    base_weights = options.pop("base_weights", "as loaded")
    with torch.inference_mode():  # as ComfyUI runs every node
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
            str(checkpoint), output_vae=True, output_clip=True
        )
        dataset = load_dataset(folder, DatasetOptions(resolution=args.size, bucket_step=min(64, args.size)))
        patcher = model.clone()
        copied = bridge.use_base_weights(patcher, base_weights)
        denoiser = bridge.ComfyDenoiser(patcher)
        bridge.load_for_training(patcher, unload_others=False)
        weight_bytes = sum(stored_weight_bytes(denoiser.network).values())
        stamps: list[float] = []
        try:
            with common.MemoryPeak() as memory:
                result = train_lora(
                    denoiser,
                    bridge.ComfyTextEncoder(clip),
                    bridge.ComfyLatentCodec(vae, patcher),
                    dataset,
                    LoRAConfig(rank=args.rank, alpha=args.rank),
                    TrainingConfig(
                        steps=args.steps + args.warmup, learning_rate=1e-3, mixed_precision="fp32",
                        batch_size=args.batch, **options,
                    ),
                    caption_for=dataset.caption_for,
                    key_namer=bridge.kohya_key_namer(patcher),
                    on_step=lambda report: stamps.append(time.perf_counter()),
                )
        finally:
            if copied:
                bridge.release(patcher)
    tail = result.losses[-10:]
    return {
        "s_per_step": common.seconds_per_step(stamps, args.warmup),
        "peak_mib": memory.mib,
        "weight_mib": weight_bytes / 2**20,
        "final_loss": sum(tail) / len(tail),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="runs per variant, interleaved")
    parser.add_argument("--threads", type=int, default=common.default_threads(), help="torch threads in every variant")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        common.fix_threads(args.threads)
        print("RESULT " + json.dumps(run(args, VARIANTS[args.variant])))
        return 0
    results = common.run_repeated(__file__, VARIANTS, args.repeats, common.child_arguments(sys.argv[1:]))
    if results is None:
        return 1
    reference = common.median(results["as_loaded"], "s_per_step")
    print(
        f"tiny SD1.5, {args.size}x{args.size}, rank {args.rank}, batch {args.batch}, fp32 compute, "
        f"{args.steps} timed steps after {args.warmup} warm-up, CPU, {args.threads} threads, {args.repeats} runs per "
        "variant (median, min–max)"
    )
    print(
        f"{'variant':24} {'ms/step':>20} {'time vs as loaded':>18} {'peak MiB':>20} {'weights MiB':>12} "
        f"{'final loss':>11}"
    )
    for name, runs in results.items():
        slower = common.median(runs, "s_per_step") / reference
        print(
            f"{name:24} {common.spread([r['s_per_step'] for r in runs], 1000):>20} {slower:17.2f}x "
            f"{common.spread([r['peak_mib'] for r in runs]):>20} {runs[0]['weight_mib']:12.1f} "
            f"{common.median(runs, 'final_loss'):11.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
