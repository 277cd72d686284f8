"""Training through networks that update their activations in place.

ComfyUI's Flux blocks (``img += ...``) and its CLIP layers (``x += self.self_attn(...)``) add to a tensor
autograd has saved for the backward pass, which then fails. Saving a copy of each saved activation
instead lets them train; weights are never copied.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def _clone_if_activation(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.clone() if tensor.grad_fn is not None else tensor


def keep_saved_activations() -> contextlib.AbstractContextManager[Any]:
    """Within the block, autograd saves copies of activations (tensors with a ``grad_fn``)."""
    return torch.autograd.graph.saved_tensors_hooks(_clone_if_activation, lambda tensor: tensor)


def is_inplace_autograd_error(error: RuntimeError) -> bool:
    return "modified by an inplace operation" in str(error)
