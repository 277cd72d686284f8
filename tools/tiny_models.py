"""Tiny random models for the tests, the demo and the benchmarks; nothing is ever downloaded.

- :func:`build_tiny_sd15_checkpoint` writes a ``.safetensors`` checkpoint in SD1.5 layout that
  ComfyUI's ``CheckpointLoaderSimple`` detects as SD15 (UNet 13.6 M params, TAESD-layout VAE,
  the full SD1 CLIP text encoder). It is built with ComfyUI's own module classes, in a child
  process: importing ``comfy`` sets global torch state and puts ComfyUI's top-level modules
  (``nodes``, ``utils``) in reach of a process that also imports this pack's ``nodes``.
- :func:`build_tiny_diffusers_models` returns a tiny diffusers UNet, VAE, transformers CLIP
  text encoder and a real ``CLIPTokenizer`` over a byte-level vocabulary generated on the spot,
  for the ComfyUI-free core tests.

Both are deterministic for a seed.

    python tools/tiny_models.py sd15 path/to/tiny.safetensors --seed 0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Bump when the checkpoint's content changes, so cached copies are rebuilt.
TINY_SD15_VERSION = 1

# What ComfyUI's detection needs to call a UNet SD15: model_channels 320 and context_dim 768
# are pinned; the rest is read from tensor shapes, so one level, one res block, one
# transformer (detection reads context_dim from it), no middle block, plain output blocks.
TINY_SD15_UNET_CONFIG: dict[str, Any] = {
    "use_checkpoint": False,
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1],
    "channel_mult": [1],
    "transformer_depth": [1],
    "transformer_depth_output": [0, 0],
    "transformer_depth_middle": -2,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "num_heads": 8,
    "num_head_channels": -1,
    "legacy": False,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

# SD1's latent scale: ComfyUI divides latents by 0.18215 before the VAE decodes them, and
# TAESD multiplies by vae_scale to get back to its own range (as ComfyUI's VAELoader sets it).
TAESD_SD1_SCALE = 0.18215


class TinyModelError(RuntimeError):
    """A tiny model could not be built or is not what ComfyUI expects."""


# -- SD1.5 checkpoint for ComfyUI --------------------------------------------------------------


def build_tiny_sd15_checkpoint(
    path: str | os.PathLike[str], seed: int = 0, comfy_root: str | os.PathLike[str] | None = None
) -> Path:
    """Write a tiny SD1.5-format checkpoint (fp16 safetensors) to ``path`` and return it.

    Runs ComfyUI's classes in a child process with the current interpreter; ``comfy_root``
    defaults to the ComfyUI from ``tools/setup_comfyui.py`` (or ``COMFYUI_PATH``).
    """
    path = Path(path).resolve()
    if comfy_root is None:
        comfy_root = _default_comfy_root()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "sd15",
        str(path),
        "--seed",
        str(seed),
        "--comfy-root",
        str(comfy_root),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        raise TinyModelError(
            f"building the tiny SD1.5 checkpoint failed (exit {completed.returncode}):\n"
            f"{completed.stdout[-4000:]}\n{completed.stderr[-4000:]}"
        )
    return path


def _default_comfy_root() -> Path:
    try:
        from tools.setup_comfyui import comfyui_root
    except ImportError:
        from setup_comfyui import comfyui_root  # type: ignore[no-redef]
    return comfyui_root()


def seeded_init_(module: Any, generator: Any) -> None:
    """Give every parameter a deterministic value.

    ComfyUI's layers skip weight initialisation (real weights are loaded over them), so without
    this the checkpoint would hold whatever memory happened to contain. Weights with std
    1/sqrt(fan_in) keep activations near unit scale; embeddings are small like CLIP's.
    """
    import torch

    with torch.no_grad():
        for name, parameter in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if parameter.ndim == 0:
                continue  # scalars (logit_scale, vae_scale) are set by the caller
            if leaf == "bias":
                parameter.zero_()
            elif parameter.ndim == 1:
                parameter.fill_(1.0)  # norm scales
            elif "position_embedding" in name:
                parameter.normal_(0.0, 0.01, generator=generator)
            elif "embedding" in name:
                parameter.normal_(0.0, 0.02, generator=generator)
            else:
                fan_in = parameter[0].numel()
                parameter.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)


def _calibrate_taesd_(vae: Any, generator: Any) -> None:
    """Scale the last layers so a random VAE still gives usable numbers.

    Left alone, decoded pixels saturate (pure colours, nothing for a pixel test to compare)
    and encoded latents are far from unit scale. Decoded images now sit around grey with some
    spread, and encoded latents have unit spread, as with a trained VAE.
    """
    import torch

    with torch.no_grad():
        vae.vae_scale.fill_(TAESD_SD1_SCALE)
        vae.vae_shift.fill_(0.0)

        # Half unit-scale latents (what the encoder gives), half the far larger ones that a
        # random UNet leaves after sampling.
        latents = torch.randn(8, 4, 16, 16, generator=generator) * torch.tensor([1.0] * 4 + [10.0] * 4).view(
            -1, 1, 1, 1
        )
        _standardise_head_(vae.taesd_decoder, latents, mean=0.5, std=0.2)
        images = torch.rand(4, 3, 64, 64, generator=generator)
        _standardise_head_(vae.taesd_encoder, images, mean=0.0, std=1.0)


def _standardise_head_(stack: Any, inputs: Any, mean: float, std: float) -> None:
    """Rescale the last conv of ``stack`` so each output channel has the given mean and std."""
    head = stack[-1]
    head.bias.zero_()
    outputs = head(stack[:-1](inputs))
    channel_std = outputs.std(dim=(0, 2, 3))
    head.weight.mul_((std / channel_std).view(-1, 1, 1, 1))
    head.bias.copy_(mean - outputs.mean(dim=(0, 2, 3)) * std / channel_std)


def _write_tiny_sd15(path: Path, seed: int, comfy_root: Path) -> None:
    sys.path.insert(1, str(comfy_root))
    import comfy.cli_args

    # Decided at import time of comfy.model_management: without it a CUDA build of torch on a
    # machine without a GPU fails to pick a device.
    comfy.cli_args.args.cpu = True

    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.model_detection
    import comfy.ops
    import comfy.sd1_clip
    import comfy.taesd.taesd
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    unet = openaimodel.UNetModel(
        **TINY_SD15_UNET_CONFIG, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init
    )
    seeded_init_(unet, generator)
    state.update({f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()})

    vae = comfy.taesd.taesd.TAESD(latent_channels=4)
    seeded_init_(vae, generator)
    _calibrate_taesd_(vae, generator)
    state.update({f"first_stage_model.{k}": v for k, v in vae.state_dict().items()})

    # SD1 checkpoints keep the text encoder as `cond_stage_model.transformer.text_model.*`;
    # ComfyUI maps `cond_stage_model.` onto its `clip_l.` model when it loads them.
    clip = comfy.sd1_clip.SD1ClipModel(device="cpu", dtype=torch.float32).clip_l
    seeded_init_(clip, generator)
    for key, value in clip.state_dict().items():
        if key.endswith("logit_scale"):
            value = torch.tensor(math.log(100.0))  # CLIP's trained value; unused for conditioning
        state[f"cond_stage_model.{key}"] = value

    config = comfy.model_detection.model_config_from_unet(state, "model.diffusion_model.")
    detected = type(config).__name__ if config is not None else None
    if detected != "SD15":
        raise TinyModelError(f"ComfyUI detects the tiny UNet as {detected}, not SD15")

    # The two VAE scalars stay fp32 so the latent scale is exact; everything else is fp16.
    on_disk = {
        key: value.float().clone() if value.ndim == 0 else value.to(torch.float16).contiguous()
        for key, value in state.items()
        if value.is_floating_point()
    }
    skipped = sorted(set(state) - set(on_disk))
    if skipped:
        raise TinyModelError(
            f"non-float tensors in the tiny checkpoint, ComfyUI would not expect them: {skipped}"
        )
    # One metadata entry: safetensors writes several in hash order, which would make two
    # builds with the same seed differ in their header bytes.
    metadata = {
        "lora_lab.tiny_model": json.dumps(
            {"kind": "sd15", "builder_version": TINY_SD15_VERSION, "seed": seed}
        )
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process: parallel test sessions may build the same file at once.
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    save_file(on_disk, str(partial), metadata=metadata)
    os.replace(partial, path)
    parameters = sum(v.numel() for v in on_disk.values())
    unet_parameters = sum(v.numel() for k, v in on_disk.items() if k.startswith("model.diffusion_model."))
    print(
        json.dumps(
            {
                "path": str(path),
                "parameters": parameters,
                "unet_parameters": unet_parameters,
                "bytes": path.stat().st_size,
            }
        )
    )


# -- diffusers / transformers models for ComfyUI-free tests ------------------------------------


@dataclass
class TinyDiffusersModels:
    """SD1-shaped but tiny: UNet cross-attention width equals the text encoder width (32)."""

    unet: Any  # diffusers.UNet2DConditionModel, 4 latent channels
    vae: Any  # diffusers.AutoencoderKL, 8x downscale like SD, scaling_factor 0.18215
    text_encoder: Any  # transformers.CLIPTextModel, hidden size 32
    tokenizer: Any  # transformers.CLIPTokenizer over bytes only (no merges), 77 tokens
    scheduler: Any  # diffusers.DDPMScheduler with SD1's scaled-linear betas


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP's (and GPT-2's) reversible byte -> printable character table.
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes), strict=True))


def build_tiny_clip_tokenizer() -> Any:
    """A real ``CLIPTokenizer`` whose vocabulary is just the 256 byte symbols (+ end-of-word forms).

    Every word is split into characters, so any caption tokenizes without a download and
    behaves like CLIP's tokenizer (lower-casing, start/end tokens, padding to 77).
    """
    from transformers import CLIPTokenizer

    symbols = list(_bytes_to_unicode().values())
    vocabulary = symbols + [symbol + "</w>" for symbol in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory(prefix="tiny-clip-tokenizer-") as folder:
        vocab_file = Path(folder) / "vocab.json"
        merges_file = Path(folder) / "merges.txt"
        vocab_file.write_text(json.dumps({token: index for index, token in enumerate(vocabulary)}))
        merges_file.write_text("#version: 0.2\n")
        # from_pretrained on a folder reads vocab.json + merges.txt in transformers 4 and 5
        # alike (their constructors differ: file paths versus in-memory vocab).
        tokenizer = CLIPTokenizer.from_pretrained(
            folder, local_files_only=True, model_max_length=77, pad_token="<|endoftext|>"
        )
    return tokenizer


def build_tiny_diffusers_models(seed: int = 0) -> TinyDiffusersModels:
    """Tiny random diffusers/transformers models; deterministic for ``seed``, global RNG untouched."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tiny_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=64,
            scaling_factor=0.18215,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    for model in (unet, vae, text_encoder):
        model.eval()
    return TinyDiffusersModels(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    sd15 = commands.add_parser("sd15", help="write a tiny SD1.5 checkpoint")
    sd15.add_argument("path", type=Path)
    sd15.add_argument("--seed", type=int, default=0)
    sd15.add_argument(
        "--comfy-root", type=Path, default=None, help="default: tools/setup_comfyui.py's ComfyUI"
    )
    args = parser.parse_args(argv)
    if args.command == "sd15":
        _write_tiny_sd15(args.path.resolve(), args.seed, (args.comfy_root or _default_comfy_root()).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
