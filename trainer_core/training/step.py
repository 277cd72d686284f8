"""One optimizer step of a run: the forward and backward passes (mixed precision, gradient
checkpointing, the NaN guard) over ``gradient_accumulation`` batches, then applying the gradients
(clipping, loss scaling, the optimizer's placement, the scheduler and the moving average)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

from ..models.protocols import Denoiser, TextEmbedding
from .bookkeeping import export_weights
from .encoding import concat_text, text_groups
from .first_frame import with_first_frames
from .losses import add_noise, diffusion_loss, sample_noise, sample_sigmas
from .masked_loss import batch_mask
from .results import NonFiniteLossError
from .run import TrainingRun


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' becomes bf16 on GPUs that have it, fp16 (with loss scaling) on other GPUs, fp32 on CPU."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def gradient_checkpointing(network: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Recompute each top-level block in the backward pass (blocks are the children of ModuleLists)."""
    import torch.utils.checkpoint as checkpoint

    wrapped: list[torch.nn.Module] = []
    if enabled:
        for child in network.children():
            if isinstance(child, torch.nn.ModuleList):
                for block in child:
                    original = block.forward

                    def forward(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                        return checkpoint.checkpoint(_original, *args, use_reentrant=False, **kwargs)

                    block.forward = forward  # type: ignore[method-assign]
                    wrapped.append(block)
    try:
        yield
    finally:
        for block in wrapped:
            del block.forward


def forward_backward(run: TrainingRun, batch: list[list[int]]) -> float:
    """Gradients of one optimizer step (over ``gradient_accumulation`` global batches); returns its loss.

    Each process trains on its share of every global batch, its loss weighted by that share, so the sum
    of the processes' gradients (``parallel.sum_gradients``, after this) is the gradient of the whole
    global batch; with one process the share is everything and the weight 1."""
    run.optimizer.zero_grad(set_to_none=True)
    step_loss = 0.0
    for indices in batch:
        step_loss += _global_batch_loss(run, indices) / run.training.gradient_accumulation
    return step_loss


def _global_batch_loss(run: TrainingRun, indices: list[int]) -> float:
    """Backward this process's share of one global batch; return the global batch's loss. Captions, noise
    and noise levels are drawn for the whole global batch, as one process would, and then shared out."""
    denoiser, training, parallel = run.denoiser, run.training, run.parallel
    device = denoiser.device
    mine = parallel.share(indices)
    if run.randomised:
        captions = [run.caption(run.data.items[i], run.caption_rng) for i in indices]
    else:
        captions = [run.fixed_captions[i] for i in indices]
    x0 = torch.stack([run.latents[i] for i in indices]).to(device)
    noise = sample_noise(x0, run.noise_rng, training.noise_offset, training.multires_noise_iterations,
                         training.multires_noise_discount)
    sigma = sample_sigmas(denoiser.training_sigmas, x0.shape[0], run.noise_rng, training.timestep_sampling).to(device)
    mask = batch_mask(run.latent_masks, indices, x0)
    weights = torch.tensor([run.loss_weights[i] for i in indices])
    weighted = 0.0
    loss: torch.Tensor | None = None
    if mine:
        if len(mine) < len(indices):
            x0, noise, sigma, weights = x0[mine], noise[mine], sigma[mine], weights[mine]
            mask = mask[mine] if mask is not None else None
            captions = [captions[i] for i in mine]
        items = [indices[i] for i in mine] if len(mine) < len(indices) else indices
        embeddings = with_first_frames(run.texts.get(captions), run.first_frames, items)  # image-to-video models
        noisy = add_noise(x0, noise, sigma, denoiser.prediction)
        with _autocast(device, training.mixed_precision):
            estimate = denoise_in_text_groups(denoiser, noisy, sigma, embeddings)
        loss = diffusion_loss(estimate, x0, sigma, denoiser.prediction, training.min_snr_gamma,
                              training.loss_type, training.huber_c, mask=mask,
                              sample_weights=None if bool((weights == 1).all()) else weights)
        if len(mine) < len(indices):
            loss = loss * (len(mine) / len(indices))
        weighted = loss.item()
    global_loss = parallel.sum(weighted)  # every process sees the same value, so all stop on a bad one
    if not math.isfinite(global_loss):
        raise NonFiniteLossError(
            f"the loss became {global_loss} at step {run.step + 1}: training stopped. The LoRA keeps the "
            "weights of the last good step. Lower the learning rate, or use bf16/fp32 instead of fp16.",
            export_weights(run),
            run.step,
        )
    if loss is not None:
        run.scaler.scale(loss / training.gradient_accumulation).backward()
    return global_loss


def denoise_in_text_groups(
    denoiser: Denoiser, noisy: torch.Tensor, sigma: torch.Tensor, embeddings: list[TextEmbedding]
) -> torch.Tensor:
    """The denoiser's estimate for the batch: one pass where the captions batch as ComfyUI batches them,
    else one pass per ``text_groups`` group, put back in the batch's order."""
    groups = text_groups(embeddings)
    if len(groups) == 1:
        return denoiser.denoise(noisy, sigma, _batched_text(embeddings, noisy.device))
    estimates: list[torch.Tensor | None] = [None] * len(embeddings)
    for group in groups:
        index = torch.tensor(group, device=noisy.device)
        text = _batched_text([embeddings[i] for i in group], noisy.device)
        for position, estimate in zip(group, denoiser.denoise(noisy[index], sigma[index], text), strict=True):
            estimates[position] = estimate
    return torch.stack([estimate for estimate in estimates if estimate is not None])


def _batched_text(embeddings: list[TextEmbedding], device: torch.device) -> TextEmbedding:
    return {k: v.to(device) for k, v in concat_text(embeddings).items()}


def apply_gradients(run: TrainingRun) -> None:
    run.placement.gradients_to_optimizer()
    if run.training.max_grad_norm > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.params, run.training.max_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.placement.parameters_to_model()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update()
