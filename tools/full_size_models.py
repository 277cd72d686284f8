"""Full-size SD1.5 and SDXL checkpoints with random weights, for the opt-in full-size check.

ComfyUI's own classes at the real architecture sizes (SD1.5: UNet 860 M parameters, CLIP-L, the
KL VAE; SDXL: UNet 2.6 B, CLIP-L and CLIP-G, the KL VAE), given deterministic random weights and
written in the layout ComfyUI's own checkpoint saver writes (``state_dict_for_saving``), so
``CheckpointLoaderSimple`` detects them as SD15 / SDXL. Nothing is downloaded. Built in a child
process, like ``tiny_models.py``: importing ``comfy`` sets global torch state.

    python tools/full_size_models.py sdxl path/to/sdxl_random.safetensors --seed 0

fp16 on disk: SD1.5 about 2 GB, SDXL about 7 GB; SDXL needs about 8 GB of RAM to build.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

try:
    from tools.setup_comfyui import comfyui_root
    from tools.tiny_models import TinyModelError, seeded_init_
except ImportError:  # run as a script
    from setup_comfyui import comfyui_root  # type: ignore[no-redef]
    from tiny_models import TinyModelError, seeded_init_  # type: ignore[no-redef]

FULL_SIZE_VERSION = 1
KINDS = ("sd15", "sdxl")

# The real architectures, as ComfyUI's model detection knows them (comfy/model_detection.py).
UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "sd15": {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
        "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
        "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_temporal_attention": False, "use_temporal_resblock": False,
    },
    "sdxl": {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
        "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
        "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
        "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "use_temporal_attention": False, "use_temporal_resblock": False,
    },
}
# The KL VAE every SD1.5 and SDXL checkpoint carries.
VAE_CONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
              "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def build_full_size_checkpoint(
    kind: str, path: str | os.PathLike[str], seed: int = 0, comfy_root: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Write the ``kind`` checkpoint to ``path`` (skipped when one from the same builder and seed is
    there) and return what was written: path, parameters, bytes."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    path = Path(path).resolve()
    existing = _existing(path, kind, seed)
    if existing is not None:
        return existing
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    command = [sys.executable, str(Path(__file__).resolve()), kind, str(path), "--seed", str(seed),
               "--comfy-root", str(comfy_root or comfyui_root())]
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        raise TinyModelError(
            f"building the full-size {kind} checkpoint failed (exit {completed.returncode}):\n"
            f"{completed.stdout[-4000:]}\n{completed.stderr[-4000:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _existing(path: Path, kind: str, seed: int) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        built = json.loads((handle.metadata() or {}).get("lora_lab.full_size_model", "{}"))
        if built != {"kind": kind, "builder_version": FULL_SIZE_VERSION, "seed": seed}:
            return None
        parameters = sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())
    return {"path": str(path), "parameters": parameters, "bytes": path.stat().st_size, "reused": True}


def _write(kind: str, path: Path, seed: int, comfy_root: Path) -> None:
    sys.path.insert(1, str(comfy_root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # see tiny_models._write_tiny_sd15

    import comfy.ldm.models.autoencoder
    import comfy.model_detection
    import comfy.supported_models
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    config_class = {"sd15": comfy.supported_models.SD15, "sdxl": comfy.supported_models.SDXL}[kind]
    model_config = config_class(dict(UNET_CONFIGS[kind]))
    model_config.set_inference_dtype(torch.float16, None)
    model = model_config.get_model({})
    seeded_init_(model.diffusion_model, generator)

    clip = model_config.clip_target({}).clip(device="cpu", dtype=torch.float16)
    seeded_init_(clip, generator)
    with torch.no_grad():
        for name, value in clip.named_parameters():
            if name.endswith("logit_scale"):
                value.fill_(math.log(100.0))
    vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=dict(VAE_CONFIG), embed_dim=4).to(torch.float16)
    seeded_init_(vae, generator)

    state = model.state_dict_for_saving(clip.state_dict(), vae.state_dict())
    state = {key: value.contiguous() for key, value in state.items() if value.is_floating_point()}
    detected = comfy.model_detection.model_config_from_unet(state, "model.diffusion_model.")
    name = {"sd15": "SD15", "sdxl": "SDXL"}[kind]
    if type(detected).__name__ != name:
        raise TinyModelError(f"ComfyUI detects the full-size UNet as {type(detected).__name__}, not {name}")
    metadata = {"lora_lab.full_size_model": json.dumps({"kind": kind, "builder_version": FULL_SIZE_VERSION,
                                                        "seed": seed})}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    save_file(state, str(partial), metadata=metadata)
    os.replace(partial, path)
    print(json.dumps({"path": str(path), "parameters": sum(v.numel() for v in state.values()),
                      "bytes": path.stat().st_size}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("path", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--comfy-root", type=Path, default=None, help="default: tools/setup_comfyui.py's ComfyUI")
    args = parser.parse_args(argv)
    _write(args.kind, args.path.resolve(), args.seed, (args.comfy_root or comfyui_root()).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
