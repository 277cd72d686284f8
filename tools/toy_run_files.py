"""The files a toy pretraining run writes, and what ``--init-from`` reads back: the UNet + VAE as an
SD1.5 checkpoint (fp16), the sample grid, and the recipe JSON that records how the run went.

Used by tools/pretrain_toy.py; nothing here imports ComfyUI.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from tools.toy_model import TEXT_ENCODER_GENERATOR
from tools.toy_scenes import CAPTION_TEMPLATE, HELD_OUT_PREFIX, SIDE_RANGE, TOY_COLOURS, TOY_SHAPES
from tools.toy_training import (
    EncodedCaptions,
    EncodedScenes,
    Evaluation,
    PretrainRecipe,
    mean_pairwise_cosine,
)

WEIGHTS_NAME = "toy_sd15_unet_vae.safetensors"
RECIPE_NAME = "toy_sd15_recipe.json"
RECIPE_VERSION = 1


def checkpoint_state(unet: torch.nn.Module, vae: Any) -> dict[str, torch.Tensor]:
    """UNet and VAE under SD1.5 checkpoint keys, fp16 (the two VAE scalars stay fp32, exact)."""
    state = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    state.update({f"first_stage_model.{k}": v for k, v in vae.state_dict().items()})
    return {
        k: v.detach().float().clone() if v.ndim == 0 else v.detach().to(torch.float16).contiguous()
        for k, v in state.items()
    }


def load_previous_stage(weights: Path, unet: torch.nn.Module, vae: Any) -> dict[str, Any]:
    """Load a first stage's UNet and VAE (vae_scale/vae_shift included); return its recipe."""
    from safetensors.torch import load_file

    recipe_path = weights.with_name(RECIPE_NAME)
    if not recipe_path.is_file():
        raise FileNotFoundError(
            f"{recipe_path} is missing: --init-from needs the recipe written next to the weights"
        )
    state = load_file(str(weights))
    for module, prefix in ((unet, "model.diffusion_model."), (vae, "first_stage_model.")):
        module.load_state_dict(
            {k[len(prefix) :]: v.float() for k, v in state.items() if k.startswith(prefix)}
        )
    return json.loads(recipe_path.read_text())


def save_sample_grid(images: np.ndarray, path: Path) -> None:
    """The sampled pictures as one PNG, at most 8 to a row."""
    rows = images.reshape(-1, min(8, len(images)), 64, 64, 3)
    Image.fromarray(np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)).save(path)


def save_weights(unet: torch.nn.Module, vae: Any, checksum: str, weights: Path) -> Path:
    """UNet + VAE as one SD1.5 checkpoint, written to a temp file and renamed into place."""
    from safetensors.torch import save_file

    partial = weights.with_name(f".{weights.name}.partial")
    save_file(
        checkpoint_state(unet, vae),
        str(partial),
        metadata={
            "lora_lab.toy_model": json.dumps(
                {"recipe_version": RECIPE_VERSION, "text_encoder_sha256": checksum}
            )
        },
    )
    os.replace(partial, weights)
    return weights


def recipe_report(
    recipe: PretrainRecipe,
    text: EncodedCaptions,
    scenes: EncodedScenes,
    vae: Any,
    checksum: str,
    channel_std: list[float],
    losses: tuple[list[float], list[float]],
    evaluation: Evaluation,
) -> dict[str, Any]:
    """What the recipe JSON records of the run, up to its evaluation (timings and environment follow)."""
    autoencoder_losses, unet_losses = losses
    return {
        "recipe_version": RECIPE_VERSION,
        "recipe": asdict(recipe),
        "scenes": {
            "shapes": list(TOY_SHAPES),
            "colours": TOY_COLOURS,
            "caption_template": CAPTION_TEMPLATE,
            "side_range": list(SIDE_RANGE),
            "captions": len(text.captions),
            "prefixed_captions": len(text.prefixed),
            "prefix_words_example": sorted({p.split(",")[0] for p in text.prefixed})[:8],
        },
        "text_encoder": {
            "seed": recipe.text_encoder_seed,
            "generator": TEXT_ENCODER_GENERATOR,
            "sha256": checksum,
            "caption_mean_pairwise_cosine": mean_pairwise_cosine(text.contexts),
        },
        "vae": {
            "raw_latent_mean": scenes.raw_mean,
            "raw_latent_std": scenes.raw_std,
            "vae_scale": vae.vae_scale.item(),
            "vae_shift": vae.vae_shift.item(),
            "probe_mse": scenes.probe_mse,
            "unet_latent_channel_std": channel_std,
        },
        "losses": {
            "autoencoder_mse_every_20_steps": autoencoder_losses,
            "unet_eps_mse_every_25_steps": unet_losses,
        },
        "evaluation": {
            "sampler": "euler",
            "scheduler": "normal",
            "steps": recipe.eval_steps,
            "cfg": recipe.eval_cfg,
            "passed": evaluation.passed,
            "passed_with_held_out_prefix": evaluation.passed_with_held_out_prefix,
            "held_out_prefix": f"{HELD_OUT_PREFIX}, ",
            "samples": evaluation.samples,
        },
    }


def environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
