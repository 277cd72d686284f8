"""The small interfaces the training loop needs from a model.

A front end (ComfyUI's bridge in ``nodes/bridge.py``, or the diffusers back end in
``trainer_core.models.diffusers_backend``) adapts its objects to these. The loop never sees anything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import torch

# What a network predicts: the noise, v, the flow (noise minus data) or the clean image. "flow_cosmos" is
# Cosmos Predict2's rectified flow: the network predicts noise minus data, like "flow", on latents noised as
# eps models noise them (x0 + sigma*n, sigma up to 80) and scaled to the flow path t = sigma/(sigma+1).
PredictionType = Literal["eps", "v", "flow", "flow_cosmos", "x0"]

# Text-encoder output for one or more captions, batch first: e.g. {"cross_attn": [B,77,768],
# "pooled_output": [B,1280]}. Only the denoiser that made it needs to understand the keys.
TextEmbedding = dict[str, torch.Tensor]


class Denoiser(Protocol):
    """A diffusion network with its noise schedule and prediction type."""

    @property
    def network(self) -> torch.nn.Module:
        """The module LoRA layers are injected into (UNet or transformer)."""

    @property
    def prediction(self) -> PredictionType:
        """What the network predicts: eps, v, flow (noise minus data), flow_cosmos or x0."""

    @property
    def training_sigmas(self) -> torch.Tensor:
        """The noise levels training draws from uniformly (1-D, the model's own schedule)."""

    @property
    def device(self) -> torch.device: ...

    def denoise(self, noisy: torch.Tensor, sigma: torch.Tensor, text: TextEmbedding) -> torch.Tensor:
        """The network's estimate of the clean latent ``x0`` for ``noisy`` at noise level ``sigma`` [B]."""


class TextEncoder(Protocol):
    def encode(self, captions: Sequence[str]) -> list[TextEmbedding]:
        """One embedding per caption, each with batch size 1."""


class TrainableTextEncoder(TextEncoder, Protocol):
    """A text encoder that can also be trained (``text_encoder_lr`` above 0) and stop early (clip skip)."""

    @property
    def network(self) -> torch.nn.Module:
        """The module LoRA layers go into: every text encoder (in ComfyUI, the CLIP's ``cond_stage_model``).
        ``encode`` must let gradients reach it."""

    def with_clip_skip(self, clip_skip: int) -> TextEncoder:
        """The same encoder, encoding with the output ``clip_skip`` layers from the end (1 = the last)."""


class LatentCodec(Protocol):
    """Pixels to latents. A codec over a video VAE also has ``video_vae = True`` and ``encode_clip(frames)``
    (one clip's frames [F,H,W,3] to [1,C,T,h,w]), and ``trains_clips = True`` when its model is a video
    model (clips train as clips; otherwise each item's first frame trains as an image)."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B,H,W,3] in 0..1 to latents in the space the denoiser works in."""
