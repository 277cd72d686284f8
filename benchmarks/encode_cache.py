"""Encoding with the encoding cache: run 2 of an unchanged dataset against run 1, measured in the same session.

    .venv/bin/python benchmarks/encode_cache.py [--images 16] [--size 64] [--repeats 5] [--threads 2]

The tiny SD1.5 checkpoint (TAESD VAE, SD1 CLIP-L at full size) is loaded with ComfyUI's own loader, in this
process, on the CPU. Each repeat trains 1 step three times, through the same bridge calls Train LoRA makes:
with the cache off (the reference: everything encoded, nothing kept), with an empty cache (run 1: encode and
write) and again (run 2: read back). A run's encode time is what Train LoRA spends before its first step
on encodings: computing the VAE's and CLIP's identities (nodes/encoding_cache.py) plus the loop's encoding
(``TrainingResult.encode_seconds``: hashing each image file, reading or encoding, writing). Printed: median
and min-max of each over the repeats, and the ratios run 2 / run 1 and run 1 / cache off.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "helpers"))


def make_dataset(folder: Path, count: int, size: int) -> Path:
    """``count`` PNGs, each with its own caption (so every caption is an encoding of its own)."""
    from tools.synthetic_dataset import make_shapes_dataset

    make_shapes_dataset(folder, count=count, size=size, shape="ring", trigger_word="sks")
    for index in range(count):
        (folder / f"{index:03d}.txt").write_text(f"sks, a yellow ring on a blue background, picture {index}")
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    from comfy_inproc import import_comfy, load_pack

    comfy_root = import_comfy()
    load_pack()
    import comfy.sd
    from lora_lab.nodes import bridge
    from lora_lab.nodes.encoding_cache import encoding_cache
    from lora_lab.trainer_core.adapters.config import LoRAConfig
    from lora_lab.trainer_core.data.dataset import DatasetOptions, load_dataset
    from lora_lab.trainer_core.training.config import TrainingConfig
    from lora_lab.trainer_core.training.loop import train_lora

    from tools.tiny_models import build_tiny_sd15_checkpoint

    work = Path(tempfile.mkdtemp(prefix="lora_lab_encode_cache_"))
    try:
        checkpoint = REPO / ".cache" / "benchmarks" / "tiny_sd15.safetensors"
        if not checkpoint.exists():
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            build_tiny_sd15_checkpoint(checkpoint, seed=0, comfy_root=comfy_root)
        folder = make_dataset(work / "dataset", args.images, args.size)
        cache_folder = work / "encoding_cache"
        with torch.inference_mode():  # as ComfyUI runs every node
            model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=True,
                                                                        output_clip=True)
            dataset = load_dataset(folder, DatasetOptions(resolution=args.size, bucket_step=64))
            patcher = model.clone()
            bridge.load_for_training(patcher, unload_others=False)

            def encode_time(cached: bool) -> tuple[float, str]:
                started = time.perf_counter()
                cache = encoding_cache(cached, vae, clip, patcher)
                identities = time.perf_counter() - started
                result = train_lora(
                    bridge.ComfyDenoiser(patcher), bridge.ComfyTextEncoder(clip), bridge.ComfyLatentCodec(vae, patcher),
                    dataset, LoRAConfig(rank=4, alpha=4), TrainingConfig(steps=1, mixed_precision="fp32"),
                    caption_for=dataset.caption_for, encoding_cache=cache and replace(cache, folder=cache_folder),
                )
                assert result.encoding is not None
                return identities + result.encode_seconds, result.encoding.summary()

            times: dict[str, list[float]] = {"cache off": [], "run 1 (empty cache)": [], "run 2 (cached)": []}
            summaries: dict[str, str] = {}
            # Warm-up: the first calls into the models.
            bridge.ComfyTextEncoder(clip).encode(["warm up"])
            bridge.ComfyLatentCodec(vae, patcher).encode(torch.zeros(1, args.size, args.size, 3))
            for _ in range(args.repeats):
                shutil.rmtree(cache_folder, ignore_errors=True)
                for name, cached in zip(times, (False, True, True), strict=True):
                    seconds, summaries[name] = encode_time(cached)
                    times[name].append(seconds)
                    print(f"  {name}: {seconds:.3f} s ({summaries[name]})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"tiny SD1.5 (TAESD VAE, SD1 CLIP-L), {args.images} images of {args.size}x{args.size} px with "
          f"{args.images} different captions, CPU, torch threads {torch.get_num_threads()} "
          f"(interop {torch.get_num_interop_threads()}), {args.repeats} repeats")
    print(f"{'run':22} {'encode s, median':>17} {'min-max':>15}   what the run did")
    for name, values in times.items():
        print(f"{name:22} {statistics.median(values):17.3f} {min(values):7.3f}-{max(values):<7.3f}   {summaries[name]}")
    warm = [b / a for a, b in zip(times["run 1 (empty cache)"], times["run 2 (cached)"], strict=True)]
    cold = [a / b for a, b in zip(times["run 1 (empty cache)"], times["cache off"], strict=True)]
    print(f"run 2 / run 1: median {statistics.median(warm):.1%} (min-max {min(warm):.1%}-{max(warm):.1%}); "
          f"target <= 5%")
    print(f"run 1 / cache off: median {statistics.median(cold):.2f}x (min-max {min(cold):.2f}-{max(cold):.2f}x): "
          "the cost of writing the cache")
    return 0 if statistics.median(warm) <= 0.05 else 1


if __name__ == "__main__":
    raise SystemExit(main())
