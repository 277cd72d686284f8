"""Noise, noise levels and the loss, in the model's own prediction space.

The denoiser returns its estimate of the clean latent x0 (that is what ComfyUI's ``apply_model``
gives for every model type). The error of the raw network output in its own prediction space is a
per-noise-level multiple of the x0 error, so the loss here is exactly the MSE an eps, v or flow
trainer computes on the raw output — not ComfyUI's own trainer's x0-space loss, which over-weights
high noise levels by 1/sigma^2 relative to eps training.
"""

from __future__ import annotations

import torch

from ..models.protocols import PredictionType


def add_noise(latents: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, prediction: PredictionType) -> torch.Tensor:
    """The noisy latent at ``sigma`` [B]: x0 + sigma*n (eps, v, x0, flow_cosmos) or sigma*n + (1-sigma)*x0 (flow).

    flow_cosmos's network sees that latent divided by (1 + sigma): (1-t)*x0 + t*n at t = sigma/(sigma+1)."""
    s = sigma.view(-1, *([1] * (latents.ndim - 1)))
    if prediction == "flow":
        return s * noise + (1.0 - s) * latents
    return latents + s * noise


def prediction_space_factor(sigma: torch.Tensor, prediction: PredictionType) -> torch.Tensor:
    """How much an x0 error is multiplied by in the network's output space, per sample.

    eps: out = (x_t - x0_hat)/sigma, so eps error = x0 error / sigma.
    v:   v error = x0 error * sqrt(sigma^2 + 1) / sigma.
    flow: out = (x_t - x0_hat)/sigma as well.
    flow_cosmos: out = (x_t - x0_hat)/t on the flow path at t = sigma/(sigma+1), so the factor is 1/t.
    x0:  the output is x0 itself.
    """
    if prediction in ("eps", "flow"):
        return 1.0 / sigma
    if prediction == "flow_cosmos":
        return (sigma + 1.0) / sigma
    if prediction == "v":
        return torch.sqrt(sigma**2 + 1.0) / sigma
    return torch.ones_like(sigma)


def signal_to_noise(sigma: torch.Tensor, prediction: PredictionType) -> torch.Tensor:
    # flow_cosmos: ((1-t)/t)^2 at t = sigma/(sigma+1) is 1/sigma^2, as for eps.
    if prediction == "flow":
        return ((1.0 - sigma) / sigma) ** 2
    return 1.0 / sigma**2


def min_snr_weight(sigma: torch.Tensor, prediction: PredictionType, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) for the prediction type's own loss.

    eps (and flow, which also predicts noise-like targets): min(SNR, gamma) / SNR.
    v: min(SNR, gamma) / (SNR + 1).  x0: min(SNR, gamma).
    """
    if gamma <= 0:
        return torch.ones_like(sigma)
    snr = signal_to_noise(sigma, prediction)
    clipped = torch.clamp(snr, max=gamma)
    if prediction == "v":
        return clipped / (snr + 1.0)
    if prediction == "x0":
        return clipped
    return torch.clamp(gamma / snr, max=1.0)  # = clipped / snr, and 1 (not 0/0) at flow's sigma 1, where SNR is 0


LOSS_TYPES: tuple[str, ...] = ("mse", "l1", "huber")
TIMESTEP_SAMPLING: tuple[str, ...] = ("uniform", "logit_normal")


def sample_noise(
    latents: torch.Tensor,
    generator: torch.Generator,
    noise_offset: float,
    multires_iterations: int = 0,
    multires_discount: float = 0.3,
) -> torch.Tensor:
    """Gaussian noise, plus optional offset noise (one value per channel) and multires (pyramid) noise:
    low-resolution noise upsampled and added with weight discount^i, then rescaled to unit variance per sample.

    On video latents ``[B, C, T, H, W]`` the pyramid is spatial and per frame (each latent frame gets its own
    low-resolution noise over H, W; T is never downsampled), as on a batch of images: kohya's sd-scripts
    pyramid noise is spatial, and musubi-tuner has no multires noise for video to follow."""
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    if multires_iterations > 0 and latents.ndim in (4, 5):
        noise = _add_pyramid(noise, generator, multires_iterations, multires_discount)
    if noise_offset > 0:
        offset = torch.randn((latents.shape[0], latents.shape[1], *([1] * (latents.ndim - 2))), generator=generator)
        noise = noise + noise_offset * offset
    return noise.to(latents.device)


def _add_pyramid(noise: torch.Tensor, generator: torch.Generator, iterations: int, discount: float) -> torch.Tensor:
    """``noise`` [B, C, (T,) H, W] plus spatial low-resolution noise at H/2^i, W/2^i (i = 1..iterations, until
    1x1), weight discount^i, rescaled to unit standard deviation per sample."""
    height, width = noise.shape[-2:]
    for i in range(1, iterations + 1):
        h, w = max(1, height // 2**i), max(1, width // 2**i)
        low = torch.randn((*noise.shape[:-2], h, w), generator=generator)
        frames = low.reshape(noise.shape[0], -1, h, w)  # [B, C*T, h, w]: each frame of each channel on its own
        up = torch.nn.functional.interpolate(frames, size=(height, width), mode="bilinear")
        noise = noise + (discount**i) * up.view(noise.shape)
        if h == 1 and w == 1:
            break
    return noise / noise.flatten(1).std(dim=1).view(-1, *([1] * (noise.ndim - 1)))


def sample_sigmas(
    schedule: torch.Tensor, batch: int, generator: torch.Generator, sampling: str = "uniform"
) -> torch.Tensor:
    """Noise levels from the model's own schedule: uniformly, or logit-normal over its positions
    (SD3's choice for flow models: more steps at middle noise levels, fewer at the extremes)."""
    levels = schedule.detach().float().cpu()
    if sampling == "logit_normal":
        position = torch.sigmoid(torch.randn((batch,), generator=generator))
        index = (position * (levels.shape[0] - 1)).round().long()
    elif sampling == "uniform":
        index = torch.randint(0, levels.shape[0], (batch,), generator=generator)
    else:
        raise ValueError(f"timestep_sampling must be one of {TIMESTEP_SAMPLING}, not {sampling!r}")
    return levels[index]


def diffusion_loss(
    x0_estimate: torch.Tensor,
    latents: torch.Tensor,
    sigma: torch.Tensor,
    prediction: PredictionType,
    min_snr_gamma: float,
    loss_type: str = "mse",
    huber_c: float = 0.1,
    mask: torch.Tensor | None = None,
    sample_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The error in the prediction space (MSE, L1 or pseudo-Huber), min-SNR weighted, averaged over the batch.

    ``mask`` (broadcast to the latents, values 0-1: ``masked_loss.batch_mask``) weighs each latent element
    before the mean over all of them, as kohya's masked loss does: masked-out elements add nothing, and
    are not divided out (a half-masked image weighs half). ``sample_weights`` [B] multiply each sample's
    loss (``prior_loss_weight`` for regularisation images)."""
    error = (x0_estimate.float() - latents.float()) * prediction_space_factor(sigma, prediction).view(
        -1, *([1] * (latents.ndim - 1))
    )
    if loss_type == "mse":
        elementwise = error.pow(2)
    elif loss_type == "l1":
        elementwise = error.abs()
    elif loss_type == "huber":  # quadratic near 0, linear for large errors: robust to outliers
        elementwise = 2 * huber_c * (torch.sqrt(error.pow(2) + huber_c**2) - huber_c)
    else:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, not {loss_type!r}")
    if mask is not None:
        elementwise = elementwise * mask.to(elementwise.device, elementwise.dtype)
    per_sample = elementwise.flatten(1).mean(dim=1) * min_snr_weight(sigma, prediction, min_snr_gamma)
    if sample_weights is not None:
        per_sample = per_sample * sample_weights.to(per_sample.device, per_sample.dtype)
    return per_sample.mean()
