"""The four adapter types: how each is built with peft, and how its weights are written so that
ComfyUI's LoRA loader (``comfy/lora.py`` + ``comfy/weight_adapter/``) computes the weight peft trained.

Per layer, under one kohya key stem (``lora_unet_...``):

* **lora** — ``lora_down.weight`` (peft's A), ``lora_up.weight`` (B), ``alpha``. The loader adds
  ``alpha / rank * B @ A``; peft's scaling is ``alpha / rank`` too (rsLoRA: the saved alpha is adjusted).
* **loha** — ``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b``, ``alpha``. The loader adds
  ``alpha / rank * (w1_a @ w1_b) * (w2_a @ w2_b)``, as peft does.
* **lokr** — ``lokr_w1`` plus ``lokr_w2`` or ``lokr_w2_a``/``lokr_w2_b``, ``alpha``. The loader adds
  ``s * kron(w1, w2)`` with ``s = alpha / rank`` when a factor is stored low-rank and ``s = 1`` when both
  are full matrices; peft always scales by ``alpha / rank``. For full-full layers the scale is therefore
  folded into ``lokr_w1`` and ``alpha`` is written as the rank (as LyCORIS writes such layers).
* **dora** — the lora tensors plus ``dora_scale``. peft's magnitude ``m`` is per output row:
  ``W' = m / ||W + s B A||_row * (W + s B A)``. ComfyUI reads a ``dora_scale`` shaped ``[out, 1, ...]`` as
  per output row ("wd_on_output") but divides by the norm of the *base* weight ``||W||_row`` (plus the
  float32 epsilon), not of the merged one. Writing ``dora_scale = m * (||W||_row + eps) / ||W + s B A||_row``
  makes its weight equal to peft's. (LyCORIS' own code divides by the merged norm: for it such a file is
  off by ``||W|| / ||W + s B A||`` per row, close to 1 for small updates.)

Every type handles the layers ``adapters.find_target_modules`` picks: linear layers and 1x1 convolutions
(peft flattens a 1x1 kernel like a linear layer for all of them; ComfyUI reshapes to the weight's shape),
and the 3x3 convolutions LoCon adds (``blocks.conv_targets``), at their own rank and alpha (``conv_rank``,
``conv_alpha``; peft's ``rank_pattern`` / ``alpha_pattern``): lora and dora save ``lora_down.weight`` as
``[rank, in, 3, 3]`` and ``lora_up.weight`` as ``[out, rank, 1, 1]`` (kohya's LoCon layout); loha's and lokr's
second factors are stored flat, ``[rank, in * 9]`` (LyCORIS without Tucker), or lokr's full ``lokr_w2`` as
``[out_k, in_n, 3, 3]``; ComfyUI reshapes each product to the weight's shape. Each layer's ``alpha`` is its
own (the rank and scale peft built the layer with), so a file may mix ranks.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .config import LoRAConfig

ADAPTER = "default"  # peft's adapter name
# The float32 epsilon ComfyUI adds to the weight norm (it patches weights in float32).
_COMFY_NORM_EPS = torch.finfo(torch.float32).eps

# Names of the per-layer containers each peft layer type keeps its trainable tensors in.
PARAMETER_PREFIXES: dict[str, tuple[str, ...]] = {
    "lora": ("lora_A", "lora_B"),
    "dora": ("lora_A", "lora_B", "lora_magnitude_vector"),
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
    "lokr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"),
}


def adapter_scale(config: LoRAConfig) -> float:
    """The factor the adapter's product is multiplied by: alpha / rank, or alpha / sqrt(rank) (rsLoRA)."""
    if config.rslora:
        return config.alpha / math.sqrt(config.rank)
    return config.alpha / config.rank


def conv_scale(config: LoRAConfig) -> float:
    """The factor of the LoCon adapters on 3x3 convolutions: conv_alpha / conv_rank (rsLoRA: / sqrt)."""
    if config.rslora:
        return config.conv_alpha / math.sqrt(config.conv_rank)
    return config.conv_alpha / config.conv_rank


def peft_config(config: LoRAConfig, targets: list[str], conv_layers: Sequence[str] = ()) -> Any:
    """The peft config that builds ``config``'s adapter on ``targets``, initialised so it starts as a no-op;
    the layers named in ``conv_layers`` (3x3 convolutions among ``targets``) get ``conv_rank`` / ``conv_alpha``."""
    # peft matches a pattern against the end of a module's path: the escaped full path names one layer.
    ranks = {re.escape(name): config.conv_rank for name in conv_layers}
    if config.adapter in ("lora", "dora"):
        from peft import LoraConfig

        return LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,  # type: ignore[arg-type]  # annotated int, any float works
            lora_dropout=config.dropout,
            use_rslora=config.rslora,
            use_dora=config.adapter == "dora",
            target_modules=targets,
            init_lora_weights=True,
            rank_pattern=ranks,
            alpha_pattern={name: config.conv_alpha for name in ranks},
        )
    # peft's LoHa and LoKr always scale by alpha / rank: rsLoRA is that with alpha * sqrt(rank).
    peft_alpha = adapter_scale(config) * config.rank
    patterns: dict[str, Any] = dict(rank_pattern=ranks)
    if ranks:
        patterns["alpha_pattern"] = {name: conv_scale(config) * config.conv_rank for name in ranks}
    if config.adapter == "loha":
        from peft import LoHaConfig

        return LoHaConfig(r=config.rank, alpha=peft_alpha, target_modules=targets,  # type: ignore[arg-type]
                          init_weights=True, **patterns)
    if config.adapter == "lokr":
        from peft import LoKrConfig

        # decompose_both=False: lokr_w1 stays a full (small) matrix, the layout LyCORIS uses by default.
        return LoKrConfig(r=config.rank, alpha=peft_alpha, target_modules=targets,  # type: ignore[arg-type]
                          init_weights=True, decompose_both=False, decompose_factor=-1, **patterns)
    raise ValueError(f"unknown adapter type {config.adapter!r}")


def _tensor(layer: nn.Module, container: str) -> torch.Tensor | None:
    parameters = getattr(layer, container, None)
    if parameters is None or ADAPTER not in parameters:
        return None
    value = parameters[ADAPTER]
    tensor = value.weight if isinstance(value, nn.Module) else value
    assert isinstance(tensor, torch.Tensor)
    return tensor


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().float().cpu().clone()


def export_layer(layer: nn.Module, config: LoRAConfig) -> dict[str, torch.Tensor]:
    """One peft layer's tensors under the key suffixes ComfyUI's loader reads (fp32, CPU), with the rank and
    scale peft built this layer with (a LoCon convolution's differ from the linear layers')."""
    rank, scale = layer_rank(layer), layer_scale(layer)
    alpha = torch.tensor(float(scale * rank))
    if config.adapter in ("lora", "dora"):
        down, up = _tensor(layer, "lora_A"), _tensor(layer, "lora_B")
        assert down is not None and up is not None
        out = {"lora_down.weight": _cpu(down), "lora_up.weight": _cpu(up), "alpha": alpha}
        if config.adapter == "dora":
            out["dora_scale"] = _comfy_dora_scale(layer, down, up, scale)
        return out
    if config.adapter == "loha":
        out = {}
        for name in PARAMETER_PREFIXES["loha"]:
            tensor = _tensor(layer, name)
            assert tensor is not None
            out[name] = _cpu(tensor)
        out["alpha"] = alpha
        return out
    if config.adapter == "lokr":
        out = {name: _cpu(tensor) for name in PARAMETER_PREFIXES["lokr"] if (tensor := _tensor(layer, name)) is not None}
        if "lokr_w1" in out and "lokr_w2" in out:
            out["lokr_w1"] = out["lokr_w1"] * scale
            out["alpha"] = torch.tensor(float(rank))
        else:
            out["alpha"] = alpha
        return out
    raise ValueError(f"unknown adapter type {config.adapter!r}")


def layer_rank(layer: nn.Module) -> int:
    """The rank peft built ``layer``'s adapter with."""
    return int(layer.r[ADAPTER])  # type: ignore[index]


def layer_scale(layer: nn.Module) -> float:
    """The factor peft multiplies ``layer``'s adapter product by (alpha / rank, or alpha / sqrt(rank))."""
    return float(layer.scaling[ADAPTER])  # type: ignore[index]


def _comfy_dora_scale(layer: nn.Module, down: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor:
    """peft's per-row magnitude, converted for ComfyUI's weight_decompose (see the module docstring)."""
    magnitude = _tensor(layer, "lora_magnitude_vector")
    assert magnitude is not None
    weight = layer.get_base_layer().weight.detach().double()  # type: ignore[operator]
    out_features = weight.shape[0]
    rank = down.shape[0]
    delta = (up.detach().double().reshape(out_features, rank) @ down.detach().double().reshape(rank, -1))
    base_norm = weight.reshape(out_features, -1).norm(dim=1)
    merged_norm = (weight.reshape(out_features, -1) + scale * delta).norm(dim=1)
    dora_scale = magnitude.detach().double().reshape(out_features) * (base_norm + _COMFY_NORM_EPS) / merged_norm
    # [out, 1] for linear layers, [out, 1, 1, 1] for convolutions: ComfyUI broadcasts it over the weight.
    return dora_scale.reshape(out_features, *[1] * (weight.dim() - 1)).float().cpu()


# How many entries kohya's down_lr_weight / up_lr_weight lists have (networks/lora.py: 12 blocks per side
# on SD1/SD2, 9 on SDXL).
_KOHYA_BLOCKS = {"sd": 12, "sdxl": 9}


def network_metadata(config: LoRAConfig, base_model_version: str = "") -> dict[str, str]:
    """``ss_network_module`` and ``ss_network_args`` as kohya (lora) and LyCORIS (the others) write them, with
    the LoCon rank (``conv_dim`` / ``conv_alpha``) and the block weights when set. kohya's ``down_lr_weight``
    and ``up_lr_weight`` are lists, one entry per block: each group's one weight is written for all its
    blocks (``base_model_version`` says whether kohya counts SDXL's 9 or SD's 12); ``mid_lr_weight`` is one
    number. The DiT groups, which kohya has no weights for, go in as ``double_blocks_lr_weight`` /
    ``single_blocks_lr_weight``."""
    args: dict[str, str] = {"target": config.target}
    if config.adapter != "lora":
        args = {"algo": "lora" if config.adapter == "dora" else config.adapter, **args}
    if config.conv_rank > 0:
        args.update(conv_dim=str(config.conv_rank), conv_alpha=f"{config.conv_alpha:g}")
    weights = config.block_lr_weights()
    if any(weights[name] != 1 for name in ("input_blocks_lr_weight", "middle_block_lr_weight",
                                           "output_blocks_lr_weight")):
        count = _KOHYA_BLOCKS["sdxl" if "sdxl" in base_model_version.lower() else "sd"]
        args.update(down_lr_weight=",".join([f"{weights['input_blocks_lr_weight']:g}"] * count),
                    mid_lr_weight=f"{weights['middle_block_lr_weight']:g}",
                    up_lr_weight=",".join([f"{weights['output_blocks_lr_weight']:g}"] * count))
    for name in ("double_blocks_lr_weight", "single_blocks_lr_weight"):
        if weights[name] != 1:
            args[name] = f"{weights[name]:g}"
    if config.adapter == "lora":
        return {"ss_network_module": "networks.lora", "ss_network_args": json.dumps(args)}
    if config.adapter == "dora":
        args.update(dora_wd="True", wd_on_output="True")
    if config.adapter == "lokr":
        args.update(factor="-1", decompose_both="False")
    return {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps(args)}
