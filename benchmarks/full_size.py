"""Full-size check, opt-in and not in CI: SD1.5 and SDXL at their real architecture sizes, through the canvas.

    .venv/bin/python benchmarks/full_size.py                       # SD1.5 at 512 px, SDXL at 512 px
    .venv/bin/python benchmarks/full_size.py --runs sdxl:1024      # SDXL at 1024 px (memory options on)
    .venv/bin/python benchmarks/full_size.py --runs sd15:512 sdxl:512 sdxl:1024

Checkpoints with random weights are built by ``tools/full_size_models.py`` (ComfyUI's own classes at full
size, saved in the layout ComfyUI's checkpoint saver writes, SDXL with both text encoders) into
``.out/full_size`` and reused. Each run starts a real ComfyUI on the CPU and queues, through its API:
CheckpointLoaderSimple → Load Dataset (2 images at the size asked) → Train LoRA for 2 steps at batch 1 with
a text-encoder LoRA → Save LoRA; then a second prompt loads the file with the stock LoraLoader. It fails
unless training finishes with a finite loss, the file has UNet and text-encoder keys, and LoraLoader reports
no unmatched key. Printed per run: the checkpoint's parameters, Train LoRA's seconds, the whole prompt's
seconds and the ComfyUI process's peak resident memory (VmHWM, which includes loading the checkpoint).

SDXL runs with its UNet loaded in bf16 (ComfyUI's ``--bf16-unet``), bf16 mixed precision and gradient
checkpointing (the memory options a 24 GiB machine needs); SD1.5 with Train LoRA's defaults. Expect minutes per step on a CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from safetensors import safe_open  # noqa: E402

from tools.comfy_server import ComfyServer  # noqa: E402
from tools.full_size_models import build_full_size_checkpoint  # noqa: E402
from tools.graph import Graph  # noqa: E402
from tools.synthetic_dataset import make_shapes_dataset  # noqa: E402

# SDXL's memory options: ComfyUI loads the UNet in bf16 (its own --bf16-unet; on a CPU it would otherwise
# load fp32, 10 GiB, and Train LoRA's base_weights=bf16 would add a 5 GiB copy), Train LoRA trains under bf16
# autocast with gradient checkpointing.
SERVER_ARGS = {"sd15": [], "sdxl": ["--bf16-unet"]}
MEMORY_OPTIONS = {"mixed_precision": "bf16", "gradient_checkpointing": True}


def parse_run(text: str) -> tuple[str, int]:
    kind, _, size = text.partition(":")
    if kind not in ("sd15", "sdxl") or not size.isdigit():
        raise argparse.ArgumentTypeError(f"a run is sd15:<px> or sdxl:<px>, not {text!r}")
    return kind, int(size)


def peak_rss_gib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return math.nan


def train_graph(server: ComfyServer, kind: str, size: int) -> tuple[Graph, str]:
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=f"{kind}_random.safetensors")
    dataset_inputs = server.widget_defaults("LoadDataset")
    dataset_inputs.update(folder="full_size", resolution=size, bucket_step=64, trigger_word="")
    dataset = graph.node("LoadDataset", **dataset_inputs)
    inputs = server.widget_defaults("TrainLoRA")
    inputs.update(model=checkpoint[0], clip=checkpoint[1], vae=checkpoint[2], dataset=dataset[0], steps=2,
                  batch_size=1, rank=8, alpha=8.0, learning_rate=1e-4, text_encoder_lr=1e-5, sample_every=0,
                  run_name=f"full_size_{kind}_{size}", seed=0)
    if kind == "sdxl":
        inputs.update(MEMORY_OPTIONS)
    trained = server.train_lora(graph, **inputs)
    graph.node("SaveCheckpoint", lora=trained[0], filename=f"full_size/{kind}_{size}", if_exists="overwrite")
    return graph, trained.id


def check(server: ComfyServer, kind: str, size: int) -> dict[str, object]:
    graph, trainer = train_graph(server, kind, size)
    started = time.perf_counter()
    result = server.run(graph.to_api(), timeout=4 * 3600).raise_for_error()
    prompt_seconds = time.perf_counter() - started
    path = server.models_dir / "loras" / "full_size" / f"{kind}_{size}.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
    losses = json.loads(metadata.get("lora_lab_losses", "[]"))
    if len(losses) != 2 or not all(math.isfinite(loss) for loss in losses):
        raise SystemExit(f"{kind} {size}px: training's losses are {losses}, not 2 finite values")
    unet_keys = [key for key in keys if key.startswith("lora_unet_")]
    text_keys = [key for key in keys if key.startswith("lora_te")]
    if not unet_keys or not text_keys:
        raise SystemExit(f"{kind} {size}px: the file has {len(unet_keys)} UNet and {len(text_keys)} text-encoder keys")

    loader = Graph()
    checkpoint = loader.node("CheckpointLoaderSimple", ckpt_name=f"{kind}_random.safetensors")
    loaded = loader.node("LoraLoader", model=checkpoint[0], clip=checkpoint[1], lora_name=f"full_size/{kind}_{size}.safetensors",
                         strength_model=1.0, strength_clip=1.0)
    loader.node("PreviewAny", source=loaded[1])
    log_start = server.log_offset()
    server.run(loader.to_api(), timeout=3600).raise_for_error()
    log = server.log_text(since=log_start)
    unmatched = [line for line in log.splitlines() if "lora key not loaded" in line]
    if unmatched:
        raise SystemExit(f"{kind} {size}px: LoraLoader did not load {len(unmatched)} keys, e.g. {unmatched[:3]}")
    return {"train_seconds": result.node_seconds.get(trainer, math.nan), "prompt_seconds": prompt_seconds,
            "keys": len(keys), "unet_keys": len(unet_keys), "text_keys": len(text_keys), "losses": losses}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", type=parse_run, default=[("sd15", 512), ("sdxl", 512)])
    parser.add_argument("--models", type=Path, default=REPO / ".out" / "full_size")
    args = parser.parse_args()
    rows = []
    for kind, size in args.runs:
        built = build_full_size_checkpoint(kind, args.models / f"{kind}_random.safetensors")
        print(f"[full_size] {kind}: {built['parameters'] / 1e9:.2f} B parameters, {built['bytes'] / 2**30:.1f} GiB "
              f"on disk", flush=True)
        with tempfile.TemporaryDirectory(prefix="lora_lab_full_size_") as base:
            server = ComfyServer(base, extra_args=SERVER_ARGS[kind])
            server.prepare_base_dir()
            (server.models_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            (server.models_dir / "checkpoints" / f"{kind}_random.safetensors").symlink_to(Path(built["path"]))
            make_shapes_dataset(server.input_dir / "full_size", count=2, size=size)
            with server:
                figures = check(server, kind, size)
                figures["peak_rss_gib"] = peak_rss_gib(server._process.pid)  # type: ignore[union-attr]
        row = {"run": f"{kind} {size}px", "parameters_b": round(built["parameters"] / 1e9, 2), **figures}
        rows.append(row)
        print(f"[full_size] {row['run']}: Train LoRA {figures['train_seconds']:.0f} s for 2 steps, whole prompt "
              f"{figures['prompt_seconds']:.0f} s, peak RSS {figures['peak_rss_gib']:.1f} GiB, {figures['unet_keys']} "
              f"UNet + {figures['text_keys']} text-encoder keys, 0 unmatched in LoraLoader", flush=True)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
