"""Training a LoRA in the text encoder(s) as well, with its own learning rate; and clip skip.

With ``text_encoder_lr`` 0 (the default) the loop encodes each caption once and caches it. Above 0 it
injects a LoRA (the same rank, alpha and dropout as the UNet's) into the attention and MLP linears of
every CLIP text encoder it finds (kohya's targets: ``CLIPAttention``'s q/k/v/out projections and
``CLIPMLP``'s fc1/fc2) and, with ``train_t5``, of T5 (which encoders: ``text_encoder_parts``), encodes the captions of every step with gradients flowing into it, and trains
those weights in their own optimizer param group. The text encoder is shared like the UNet: the
adapter is taken off afterwards exactly as ``adapters.inject`` does for the UNet.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..adapters.config import LoRAConfig
from ..adapters.inject import AdapterError, InjectedAdapter, autograd_safe_weights, inject_adapter
from ..models.protocols import TextEmbedding, TextEncoder
from .activations import keep_saved_activations
from .checkpoints import ResumeError
from .config import TrainingConfig
from .text_encoder_parts import find_text_encoder_targets


def with_clip_skip(encoder: TextEncoder, clip_skip: int) -> TextEncoder:
    """The encoder that encodes with the output ``clip_skip`` layers from the end (1 = unchanged)."""
    if clip_skip == 1:
        return encoder
    method = getattr(encoder, "with_clip_skip", None)
    if method is None:
        raise ValueError(
            f"clip_skip is {clip_skip}, but this text encoder ({type(encoder).__name__}) cannot stop at an "
            "earlier layer: set clip_skip to 1"
        )
    result: TextEncoder = method(clip_skip)
    return result


class LiveText:
    """Captions encoded on every step, gradients flowing into the text encoder's LoRA.

    Has ``TextCache.get``'s signature, so the loop reads text the same way in both modes. The encoder's
    activations are saved as copies (ComfyUI's CLIP layers add to theirs in place); only the text
    encoder's, so the denoiser's activation memory is not doubled."""

    def __init__(self, encoder: TextEncoder):
        self.encoder = encoder

    def get(self, captions: Sequence[str]) -> list[TextEmbedding]:
        with keep_saved_activations():
            return self.encoder.encode(list(captions))


@contextlib.contextmanager
def text_encoder_lora(encoder: TextEncoder, lora: LoRAConfig, training: TrainingConfig) -> Iterator[InjectedAdapter]:
    """A LoRA in the encoder's CLIP attention and MLP linears (and T5's, with ``training.train_t5``: see
    ``text_encoder_parts``), seeded from ``training.seed`` + 1, for the duration of the block; the network
    comes back with its own layers, parameters and train/eval mode. ``encoder`` must be a
    ``protocols.TrainableTextEncoder``."""
    network = getattr(encoder, "network", None)
    if not isinstance(network, nn.Module):
        raise AdapterError(
            f"text_encoder_lr is above 0, but this text encoder ({type(encoder).__name__}) cannot be trained: "
            "set text_encoder_lr to 0"
        )
    targets = find_text_encoder_targets(network, training.train_t5)
    was_training = {module: module.training for module in network.modules()}
    with autograd_safe_weights(network):
        # Always a plain LoRA: the text-encoder keys ComfyUI maps are checked for that type.
        adapter = inject_adapter(network, dataclasses.replace(lora, adapter="lora"), training.seed + 1, targets=targets)
        try:
            with adapter.training_mode():  # LoRA dropout on; the encoder itself runs as it does for inference
                yield adapter
        finally:
            adapter.remove()
            for module, mode in was_training.items():
                module.training = mode


def parameter_groups(
    unet: list[nn.Parameter], text_encoder: list[nn.Parameter] | None, text_encoder_lr: float, set_rate: bool
) -> list[Any]:
    """What the optimizer gets: the UNet's LoRA (at the optimizer's rate) and, when trained, the text
    encoder's in a second group at ``text_encoder_lr``. ``set_rate`` False = the optimizer sets its own
    rate (Adafactor's relative_step): the second group then has none either."""
    if text_encoder is None:
        return unet
    group: dict[str, Any] = {"params": text_encoder}
    if set_rate:
        group["lr"] = text_encoder_lr
    return [{"params": unet}, group]


def text_encoder_state(adapter: InjectedAdapter | None) -> dict[str, Any]:
    """The text encoder's part of a resume state (empty entries when it is not trained)."""
    if adapter is None:
        return {"text_encoder_adapter": {}, "text_encoder_targets": []}
    return {
        "text_encoder_adapter": {name: p.detach().cpu().clone() for name, p in _lora_parameters(adapter).items()},
        "text_encoder_targets": list(adapter.targets),
    }


def restore_text_encoder_state(adapter: InjectedAdapter | None, state: dict[str, Any], where: str) -> None:
    """Load the text encoder's LoRA from a resume state, refusing a state from a run that trained the
    text encoder differently (states from before text-encoder training count as UNet only)."""
    targets = list(adapter.targets) if adapter is not None else []
    if state.get("text_encoder_targets", []) != targets:
        trained = "with" if state.get("text_encoder_targets") else "without"
        raise ResumeError(
            f"the resume state{where} was trained {trained} a text-encoder LoRA in these layers: set text_encoder_lr "
            "and train_t5 as in that run (text_encoder_lr 0 = UNet only) with the same CLIP, or start a new run"
        )
    if adapter is not None:
        with torch.no_grad():
            for name, param in _lora_parameters(adapter).items():
                param.copy_(state["text_encoder_adapter"][name].to(param.device, param.dtype))


def _lora_parameters(adapter: InjectedAdapter) -> dict[str, nn.Parameter]:
    return {name: p for name, p in adapter.network.named_parameters() if "lora_" in name}
