"""Attention that training can differentiate, through ComfyUI's ``optimized_attention_override`` hook."""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


def autograd_safe_attention(attention: Any, *args: Any, **kwargs: Any) -> Any:
    """ComfyUI's attention (its ``optimized_attention_override`` hook), but when the attention it chose cannot
    be differentiated, PyTorch's own: sub-quadratic attention (ComfyUI's default on a CPU) switches to chunks
    computed in place when memory runs short (``exp(out=...)``), which autograd refuses. Sampling and any
    attention that can train are untouched."""
    try:
        return attention(*args, **kwargs)
    except RuntimeError as error:
        if not torch.is_grad_enabled() or "automatic differentiation" not in str(error):
            raise
        import comfy.ldm.modules.attention

        log.info("ComfyUI's %s cannot train at this size and memory: PyTorch's attention is used for this layer",
                 getattr(attention, "__name__", "attention"))
        return comfy.ldm.modules.attention.attention_pytorch(*args, **kwargs)
