"""The training loop: encode once, then optimise a LoRA on the denoiser's own loss.

The loop knows nothing of where the model comes from. It takes a ``Denoiser``, a ``TextEncoder`` and
a ``LatentCodec`` (see ``trainer_core.models.protocols``), a dataset (``trainer_core.data.dataset.Dataset``), and reports
each optimizer step to ``on_step``; if ``on_step`` raises (ComfyUI's Cancel does), training stops
there and the network is restored all the same.

The loop's parts live beside it: ``run`` (a run's optimizer, scheduler, moving average, random
streams), ``step`` (one optimizer step), ``bookkeeping`` (export, checkpoints, resume), ``epochs``
(batches from the dataset) and ``results`` (what training hands back). The names callers use are
importable from here.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from ..adapters.config import LoRAConfig
from ..adapters.export import KeyNamer, default_key_name, default_text_key_name
from ..adapters.inject import autograd_safe_weights, inject_adapter
from ..models.protocols import Denoiser, LatentCodec, TextEncoder
from .activations import is_inplace_autograd_error, keep_saved_activations
from .bookkeeping import export_weights, extract_weights, load_state, save_checkpoint
from .checkpoints import CheckpointPolicy, load_training_state
from .config import MIXED_PRECISION_CHOICES, TrainingConfig
from .encoding import TextCache
from .encoding_cache import EncodingCache, EncodingCounts, encode_dataset
from .epochs import CaptionFunction, TrainingData, item_files, next_step_batch, samples_per_epoch
from .first_frame import encode_first_frames
from .masked_loss import latent_masks, masked_loss_problem
from .optimizers import OptimizerConfig, effective_learning_rate
from .parallel import SingleProcess
from .results import NonFiniteLossError, StepReport, TrainingError, TrainingResult
from .run import TrainingRun
from .schedulers import SchedulerConfig
from .step import apply_gradients, forward_backward, gradient_checkpointing, resolve_precision
from .text_encoder import LiveText, text_encoder_lora, with_clip_skip
from .validation import ValidationConfig, best_checkpoint, encode_held_out, validation_due
from .validation_loss import validate

__all__ = [
    "CaptionFunction",
    "NonFiniteLossError",
    "StepReport",
    "TrainingData",
    "TrainingError",
    "TrainingResult",
    "extract_weights",
    "resolve_precision",
    "samples_per_epoch",
    "train_lora",
]

log = logging.getLogger(__name__)


def train_lora(
    denoiser: Denoiser,
    text_encoder: TextEncoder,
    codec: LatentCodec,
    data: TrainingData,
    lora: LoRAConfig,
    training: TrainingConfig,
    caption_for: CaptionFunction | None = None,
    random_captions: bool = False,
    key_namer: KeyNamer = default_key_name,
    metadata: dict[str, str] | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    checkpoints: CheckpointPolicy | None = None,
    resume_from: Path | None = None,
    optimizer: OptimizerConfig | None = None,
    scheduler: SchedulerConfig | None = None,
    text_key_namer: KeyNamer = default_text_key_name,
    parallel: SingleProcess | None = None,
    validation_data: TrainingData | None = None,
    validation: ValidationConfig | None = None,
    encoding_cache: EncodingCache | None = None,
) -> TrainingResult:
    """Train a LoRA on ``denoiser.network`` and return its weights; the network is left as it was.

    ``caption_for(item, rng)``: an item's training caption (deterministic with ``rng=None``; the raw caption
    when not given); ``random_captions``: it uses ``rng`` (else each caption is encoded once). With
    ``checkpoints``, a LoRA file and a resume state are written every ``checkpoints.every`` steps and on
    cancel; ``resume_from`` (such a state) continues a run: N steps + resume + N steps equal 2N straight.
    ``optimizer`` (AdamW) and ``scheduler`` (constant, 5% warmup) take rate and weight decay from ``training``;
    ``training.text_encoder_lr`` above 0 also trains a LoRA in ``text_encoder.network`` (``text_encoder.py``),
    named with ``text_key_namer``. ``parallel`` (``parallel.AcceleratedProcesses`` under accelerate): a step
    is one global batch of ``batch_size x world_size`` images, gradients summed; only the main process writes.
    ``validation_data`` (held-out images, never trained on) is evaluated at the steps ``validation`` asks for
    (``validation.py``) without changing what trains. ``encoding_cache``: latents, and caption embeddings
    while the text encoder is frozen, come from and go to that disk cache (``encoding_cache.py``)."""
    training = _checked(training, data, denoiser.device)
    started = time.perf_counter()
    parallel = parallel or SingleProcess(denoiser.device)
    total_steps = training.resolved_steps(samples_per_epoch(data), parallel.world_size)
    caption: CaptionFunction = caption_for or (lambda item, rng: item.caption)
    randomised = caption_for is not None and random_captions
    train_text = training.text_encoder_lr > 0
    text_encoder = with_clip_skip(text_encoder, training.clip_skip)

    with torch.inference_mode(False), torch.enable_grad():
        # Read inside: tensors loaded under ComfyUI's inference mode could not be updated by the optimizer.
        resume_state = load_training_state(resume_from) if resume_from is not None else None
        latents, texts, fixed_captions, encoding, first_frames = _encode_once(
            data, codec, text_encoder, caption, randomised or train_text, encoding_cache, training.clip_skip)
        held_out = None if validation_data is None else encode_held_out(
            validation_data, codec, caption, validation or ValidationConfig())
        masks = _latent_masks(data, latents, training.masked_loss)
        encode_seconds = time.perf_counter() - started

        network = denoiser.network
        with autograd_safe_weights(network):
            adapter = inject_adapter(network, lora, training.seed)
            try:
                with contextlib.ExitStack() as stack:
                    text_adapter = None
                    if train_text:  # captions are then encoded every step, through the text encoder's LoRA
                        text_adapter = stack.enter_context(text_encoder_lora(text_encoder, lora, training))
                    stack.enter_context(gradient_checkpointing(network, training.gradient_checkpointing))
                    run = TrainingRun(
                        denoiser, adapter, latents, LiveText(text_encoder) if train_text else texts, data,
                        fixed_captions, caption, randomised, training, total_steps, key_namer, metadata or {},
                        optimizer or OptimizerConfig(), scheduler or SchedulerConfig(),
                        text_adapter=text_adapter, text_key_namer=text_key_namer, parallel=parallel,
                        latent_masks=masks,
                    )
                    run.validation, run.first_frames = held_out, first_frames
                    if resume_state is not None:
                        load_state(run, resume_state, resume_from, checkpoints)
                    result = _optimise(run, on_step, checkpoints)
            finally:
                adapter.remove()
    result.total_steps, result.mixed_precision, result.encode_seconds, result.encoding = (
        total_steps, training.mixed_precision, encode_seconds, encoding)
    result.seconds = time.perf_counter() - started
    return result


def _checked(training: TrainingConfig, data: TrainingData, device: torch.device) -> TrainingConfig:
    """``training`` with its mixed precision resolved for ``device``; an error for what cannot train."""
    if training.mixed_precision not in MIXED_PRECISION_CHOICES:
        raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION_CHOICES}, not {training.mixed_precision!r}")
    if not data.items:
        raise TrainingError("the dataset has no images")
    return replace(training, mixed_precision=resolve_precision(training.mixed_precision, device))


def _latent_masks(data: TrainingData, latents: list[torch.Tensor], masked_loss: bool) -> list | None:
    """Each latent's loss mask when ``masked_loss`` is on (``masks.py``); an error when no image has one."""
    if not masked_loss:
        return None
    masks = latent_masks(data, latents)
    problem = masked_loss_problem(masks)
    if problem:
        raise TrainingError(str(problem))
    return masks


def _encode_once(
    data: TrainingData, codec: LatentCodec, text_encoder: TextEncoder, caption: CaptionFunction, per_step: bool,
    cache: EncodingCache | None, clip_skip: int,
) -> tuple[list[torch.Tensor], TextCache, list[str], EncodingCounts, list | None]:
    """The dataset's latents, a cache of caption embeddings, each item's fixed caption, how many were
    read from ``cache``, and each item's first-frame conditioning (image-to-video models, else None). Unless
    captions are encoded at every step (``per_step``: random captions, or a text encoder in training), each
    caption is encoded here, once."""
    texts = TextCache(text_encoder)
    fixed_captions = [caption(item, None) for item in data.items]
    latents, counts = encode_dataset(data, codec, texts, None if per_step else fixed_captions, cache, clip_skip)
    return latents, texts, fixed_captions, counts, encode_first_frames(data, codec, cache, counts)


def _optimise(
    run: TrainingRun, on_step: Callable[[StepReport], None] | None, checkpoints: CheckpointPolicy | None
) -> TrainingResult:
    """Step ``run`` to its last step, reporting each; on cancel or failure, checkpoint what was learned."""
    device = run.denoiser.device
    completed = False
    try:
        with run.parallel.stopping_on_terminate(), run.adapter.training_mode(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), contextlib.ExitStack() as in_place_safe:
            if run.global_rng_state is not None:
                torch.set_rng_state(run.global_rng_state)
            else:
                torch.manual_seed(run.training.seed)  # LoRA dropout draws from the global stream
            while run.step < run.total_steps:
                run.streams_at_step_start = run.random_streams()
                batch = next_step_batch(run.batches, run.training.gradient_accumulation, run.step_items)
                try:
                    loss = forward_backward(run, batch)
                except RuntimeError as error:
                    if run.step > 0 or not is_inplace_autograd_error(error):
                        raise
                    # Found out on the first step: the network writes activations in place.
                    log.info("the network modifies activations in place: keeping copies for the backward pass")
                    in_place_safe.enter_context(keep_saved_activations())
                    loss = forward_backward(run, batch)
                run.parallel.sum_gradients(run.trainable)
                apply_gradients(run)
                run.step += 1
                run.streams_at_step_start = None
                run.losses.append(loss)
                run.learning_rates.append(effective_learning_rate(run.optimizer))
                if validation_due(run, checkpoints):
                    validate(run)
                if checkpoints is not None and (
                    (checkpoints.every and run.step % checkpoints.every == 0)
                    or (run.validation is not None and run.step == run.total_steps)  # the best is then a file
                ):
                    save_checkpoint(run, checkpoints)
                if on_step is not None:
                    on_step(StepReport(run.step, run.total_steps, loss, run.learning_rates[-1]))
            completed = True
    except BaseException as error:
        run.parallel.stop_everyone(error)
        raise
    finally:
        if not completed and checkpoints is not None and run.step > 0:
            # Cancelled or failed: keep what was learned so far, resumable (from the last finished step).
            if not run.saved_checkpoints or run.saved_checkpoints[-1] != checkpoints.lora_path(run.step):
                with run.parallel.uninterrupted():
                    save_checkpoint(run, checkpoints, wait=False)
    return TrainingResult(
        weights=export_weights(run),
        losses=list(run.losses),
        learning_rates=list(run.learning_rates),
        steps=run.step,
        checkpoints=list(run.saved_checkpoints),
        validation_losses=dict(run.validation_losses),
        batch_files=item_files(run.data, run.step_items),
        best_checkpoint=best_checkpoint(run, checkpoints, on_disk=run.parallel.is_main),
    )

