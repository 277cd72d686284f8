"""Denoiser, text encoder and latent codec over diffusers / transformers models.

For the headless runner and the core tests: the same protocols the ComfyUI bridge implements, on a
diffusers ``UNet2DConditionModel`` with its DDPM noise schedule (eps or v prediction).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .protocols import PredictionType, TextEmbedding


def ddpm_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The VE noise levels of a DDPM schedule: sigma_t = sqrt((1 - a_t) / a_t)."""
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()


class DiffusersUNetDenoiser:
    """An eps- or v-prediction diffusers UNet seen through the VE parametrisation the loop uses."""

    def __init__(self, unet: torch.nn.Module, alphas_cumprod: torch.Tensor, prediction: PredictionType = "eps"):
        if prediction not in ("eps", "v"):
            raise ValueError(f"a DDPM UNet predicts eps or v, not {prediction!r}")
        self.unet = unet
        self.sigmas = ddpm_sigmas(alphas_cumprod)
        self._prediction: PredictionType = prediction

    @property
    def network(self) -> torch.nn.Module:
        return self.unet

    @property
    def prediction(self) -> PredictionType:
        return self._prediction

    @property
    def training_sigmas(self) -> torch.Tensor:
        return self.sigmas

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigmas = self.sigmas.log().to(sigma.device)
        return (sigma.log()[:, None] - log_sigmas[None, :]).abs().argmin(dim=1)

    def denoise(self, noisy: torch.Tensor, sigma: torch.Tensor, text: TextEmbedding) -> torch.Tensor:
        s = sigma.view(-1, 1, 1, 1)
        scaled = noisy / (s**2 + 1).sqrt()
        out = self.unet(scaled, self.timestep(sigma), encoder_hidden_states=text["cross_attn"]).sample.float()
        if self._prediction == "eps":
            return noisy - s * out
        return noisy / (s**2 + 1) - out * s / (s**2 + 1).sqrt()


class TransformersTextEncoder:
    """A transformers CLIP text model and a tokenizer: the last hidden state (or, with clip skip, an
    earlier one through the final layer norm, as kohya does) as cross-attention input.

    ``encode`` does not block gradients: with a LoRA in ``network`` they reach it."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, max_length: int = 77, clip_skip: int = 1):
        layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
        if layers is not None and clip_skip > layers:
            raise ValueError(f"clip_skip {clip_skip} is more than the text encoder's {layers} layers: use 1 to {layers}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.clip_skip = clip_skip

    @property
    def network(self) -> torch.nn.Module:
        return self.model

    def with_clip_skip(self, clip_skip: int) -> TransformersTextEncoder:
        return TransformersTextEncoder(self.model, self.tokenizer, self.max_length, clip_skip)

    def encode(self, captions: Sequence[str]) -> list[TextEmbedding]:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(
            list(captions), padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        output = self.model(tokens["input_ids"].to(device), output_hidden_states=self.clip_skip > 1)
        if self.clip_skip > 1:
            text_model = getattr(self.model, "text_model", self.model)  # transformers 5 has no .text_model
            final_layer_norm: Any = text_model.final_layer_norm  # a module; getattr hides its type
            hidden = final_layer_norm(output.hidden_states[-self.clip_skip])
        else:
            hidden = output.last_hidden_state
        return [{"cross_attn": h[None]} for h in hidden]


class DiffusersLatentCodec:
    """A diffusers VAE (``AutoencoderKL`` or ``AutoencoderTiny``) with its scaling factor."""

    def __init__(self, vae: torch.nn.Module, scaling_factor: float | None = None):
        self.vae = vae
        config = getattr(vae, "config", None)
        self.scaling_factor = scaling_factor if scaling_factor is not None else getattr(config, "scaling_factor", 1.0)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.vae.parameters()).device
        pixels = images.permute(0, 3, 1, 2).to(device) * 2 - 1
        with torch.no_grad():
            encode: Any = self.vae.encode  # AutoencoderKL or AutoencoderTiny
            encoded = encode(pixels)
        latent = encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latents
        return latent * self.scaling_factor
