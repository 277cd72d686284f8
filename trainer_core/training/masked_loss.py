"""Masked loss: each image's mask, brought to its latent's size once, weighs the loss (kohya's masked loss).

A mask (float HxW in [0, 1] at the image's bucket size, from the dataset's ``load_mask``) is averaged
over each latent cell's pixels (area interpolation, as kohya does): a cell whose pixels are all
masked out weighs 0, one half masked 0.5. Images without a mask weigh 1 everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .epochs import TrainingData


def latent_masks(data: TrainingData, latents: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
    """Per item, its mask at its latent's height and width, shaped to broadcast over the latent's
    channels (and frames): [1, h, w] or [1, 1, h, w]; None for an item without a mask."""
    load: Any = getattr(data, "load_mask", None)
    masks: list[torch.Tensor | None] = []
    for item, latent in zip(data.items, latents, strict=True):
        pixels = load(item) if load is not None else None
        if pixels is None:
            masks.append(None)
            continue
        mask = torch.from_numpy(pixels).float()[None, None]
        cells = torch.nn.functional.interpolate(mask, size=tuple(latent.shape[-2:]), mode="area")[0]
        masks.append(cells.reshape(*([1] * (latent.ndim - 2)), *latent.shape[-2:]))
    return masks


def batch_mask(masks: Sequence[torch.Tensor | None], indices: Sequence[int], x0: torch.Tensor) -> torch.Tensor | None:
    """The masks of the batch ``indices`` stacked to broadcast over ``x0`` [B, C, ...]; None when none has one."""
    chosen = [masks[i] for i in indices] if masks else []
    if not any(mask is not None for mask in chosen):
        return None
    ones = torch.ones((*([1] * (x0.ndim - 3)), *x0.shape[-2:]))
    return torch.stack([mask if mask is not None else ones for mask in chosen])


def masked_loss_problem(masks: Sequence[torch.Tensor | None]) -> str | None:
    """Why masked loss cannot do what was asked: no image has a mask."""
    if any(mask is not None for mask in masks):
        return None
    return ("masked_loss is on, but no image has a mask (a greyscale <name>_mask.png beside it, or an alpha "
            "channel): add masks, or turn masked_loss off.")
