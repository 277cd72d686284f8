"""Measuring the held-out loss during a run (see ``validation`` for what is measured, and when)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from .ema import averaged
from .first_frame import with_first_frames
from .losses import add_noise, diffusion_loss
from .run import TrainingRun
from .step import _autocast, denoise_in_text_groups
from .validation import fixed_levels

log = logging.getLogger(__name__)


def validate(run: TrainingRun) -> float:
    """Measure and record the held-out loss at ``run.step``."""
    loss = held_out_loss(run)
    run.validation_losses[run.step] = loss
    log.info("validation loss at step %d: %.6f", run.step, loss)
    return loss


def held_out_loss(run: TrainingRun) -> float:
    """The mean loss over the held-out images at the fixed noise levels, with the weights a checkpoint saves."""
    held_out = run.validation
    assert held_out is not None
    denoiser, training = run.denoiser, run.training
    device = denoiser.device
    levels = fixed_levels(denoiser.training_sigmas)
    generator = torch.Generator().manual_seed(training.seed)  # the same noise at every validation
    total, count = 0.0, 0
    with _evaluating(run), averaged(run.ema):
        for index, (latent, caption) in enumerate(zip(held_out.latents, held_out.captions, strict=True)):
            noise = torch.randn((len(levels), *latent.shape), generator=generator)
            embedding = with_first_frames(run.texts.get([caption]), held_out.first_frames, [index])[0]
            for start in range(0, len(levels), training.batch_size):
                sigma = levels[start : start + training.batch_size].to(device)
                x0 = latent.unsqueeze(0).expand(len(sigma), *latent.shape).to(device)
                noisy = add_noise(x0, noise[start : start + len(sigma)].to(device), sigma, denoiser.prediction)
                with _autocast(device, training.mixed_precision):
                    estimate = denoise_in_text_groups(denoiser, noisy, sigma, [embedding] * len(sigma))
                loss = diffusion_loss(estimate, x0, sigma, denoiser.prediction, training.min_snr_gamma,
                                      training.loss_type, training.huber_c)
                total += loss.item() * len(sigma)
                count += len(sigma)
    return total / count


@contextlib.contextmanager
def _evaluating(run: TrainingRun) -> Iterator[None]:
    """No gradients, the adapters' layers in eval mode (no dropout), the global random state untouched."""
    layers = [layer for _, layer in run.adapter.layers()]
    if run.text_adapter is not None:
        layers += [layer for _, layer in run.text_adapter.layers()]
    modes = {module: module.training for layer in layers for module in layer.modules()}
    device = run.denoiser.device
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for layer in layers:
                layer.eval()
            yield
    finally:
        for module, mode in modes.items():
            module.training = mode
