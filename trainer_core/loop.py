"""The training loop: encode once, then optimise a LoRA on the denoiser's own loss.

The loop knows nothing of where the model comes from. It takes a ``Denoiser``, a ``TextEncoder`` and
a ``LatentCodec`` (see ``protocols.py``), a dataset (``trainer_core.dataset.Dataset``), and reports
each optimizer step to ``on_step``; if ``on_step`` raises (ComfyUI's Cancel does), training stops
there and the network is restored all the same.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch

from .adapters import InjectedAdapter, autograd_safe_weights, inject_lora
from .config import MIXED_PRECISION_CHOICES, LoRAConfig, TrainingConfig
from .export import KeyNamer, LoRAWeights, default_key_name
from .losses import add_noise, diffusion_loss, sample_noise, sample_sigmas
from .protocols import Denoiser, LatentCodec, TextEmbedding, TextEncoder


log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training stopped for a reason the user must act on."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; ``weights`` holds the last good LoRA."""

    def __init__(self, message: str, weights: LoRAWeights, step: int):
        super().__init__(message)
        self.weights = weights
        self.step = step


class _Item(Protocol):
    caption: str
    repeats: int
    bucket: tuple[int, int]


class TrainingData(Protocol):
    """What the loop reads of a dataset (``trainer_core.dataset.Dataset`` provides it)."""

    @property
    def items(self) -> Sequence[Any]: ...

    def load_image(self, item: Any) -> np.ndarray: ...


# (dataset item, rng) -> the caption a step trains with; rng=None means no random processing.
CaptionFunction = Callable[[Any, "random.Random | None"], str]


@dataclass(frozen=True)
class StepReport:
    step: int
    total: int
    loss: float
    learning_rate: float


@dataclass
class TrainingResult:
    weights: LoRAWeights
    total_steps: int = 0
    mixed_precision: str = "fp32"
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    encode_seconds: float = 0.0


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


def _concat_text(embeddings: Sequence[TextEmbedding]) -> TextEmbedding:
    """Batch per-caption embeddings; token sequences of different lengths are repeated to a common
    length the way ComfyUI batches conditioning (repetition leaves attention's result unchanged)."""
    out: TextEmbedding = {}
    for key in embeddings[0]:
        tensors = [e[key] for e in embeddings]
        if tensors[0].ndim == 3 and len({t.shape[1] for t in tensors}) > 1:
            length = math.lcm(*(t.shape[1] for t in tensors))
            tensors = [t.repeat(1, length // t.shape[1], 1) for t in tensors]
        out[key] = torch.cat(tensors, dim=0)
    return out


@contextlib.contextmanager
def _gradient_checkpointing(network: torch.nn.Module, enabled: bool) -> Iterator[None]:
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


def _clone_if_activation(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.clone() if tensor.grad_fn is not None else tensor


def _keep_saved_activations() -> contextlib.AbstractContextManager[Any]:
    """Save copies of activations for the backward pass, so a network that updates its activations in
    place (ComfyUI's Flux blocks do ``img += ...``) can still be trained. Weights are not copied."""
    return torch.autograd.graph.saved_tensors_hooks(_clone_if_activation, lambda tensor: tensor)


def _is_inplace_autograd_error(error: RuntimeError) -> bool:
    return "modified by an inplace operation" in str(error)


def _batches(data: TrainingData, batch_size: int, generator: random.Random) -> Iterator[list[int]]:
    """Endless epochs: every item ``repeats`` times, shuffled, batched within one bucket."""
    while True:
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for index, item in enumerate(data.items):
            by_bucket.setdefault(tuple(item.bucket), []).extend([index] * max(1, int(item.repeats)))
        batches: list[list[int]] = []
        for indices in by_bucket.values():
            generator.shuffle(indices)
            batches.extend(indices[i : i + batch_size] for i in range(0, len(indices), batch_size))
        generator.shuffle(batches)
        yield from batches


def samples_per_epoch(data: TrainingData) -> int:
    return sum(max(1, int(item.repeats)) for item in data.items)


def encode_latents(data: TrainingData, codec: LatentCodec, chunk: int = 8) -> list[torch.Tensor]:
    """Each image encoded once, at its bucket size, in small same-size chunks."""
    latents: list[torch.Tensor | None] = [None] * len(data.items)
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for index, item in enumerate(data.items):
        by_bucket.setdefault(tuple(item.bucket), []).append(index)
    with torch.no_grad():
        for indices in by_bucket.values():
            for start in range(0, len(indices), chunk):
                part = indices[start : start + chunk]
                pixels = torch.from_numpy(np.stack([data.load_image(data.items[i]) for i in part]))
                encoded = codec.encode(pixels).float().cpu()
                for i, latent in zip(part, encoded):
                    latents[i] = latent.clone()
    return [latent for latent in latents if latent is not None]


class _TextCache:
    """Embeddings per distinct caption string; random caption processing re-encodes only new strings."""

    def __init__(self, encoder: TextEncoder, limit: int = 4096):
        self.encoder = encoder
        self.limit = limit
        self.cache: dict[str, TextEmbedding] = {}

    def get(self, captions: Sequence[str]) -> list[TextEmbedding]:
        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if missing:
            with torch.no_grad():
                encoded = self.encoder.encode(missing)
            if len(self.cache) + len(missing) > self.limit:
                self.cache.clear()
            for caption, embedding in zip(missing, encoded):
                self.cache[caption] = {k: v.detach().clone() for k, v in embedding.items()}
        return [self.cache[c] for c in captions]


def extract_weights(adapter: InjectedAdapter, key_namer: KeyNamer) -> dict[str, torch.Tensor]:
    """The adapter's tensors under kohya keys (fp32 on the CPU), scale recorded as ``.alpha``."""
    out: dict[str, torch.Tensor] = {}
    alpha = adapter.scale * adapter.config.rank
    for name, layer in adapter.layers():
        stem = key_namer(name)
        down = layer.lora_A["default"].weight  # type: ignore[index,union-attr]
        up = layer.lora_B["default"].weight  # type: ignore[index,union-attr]
        out[f"{stem}.lora_down.weight"] = down.detach().float().cpu().clone()
        out[f"{stem}.lora_up.weight"] = up.detach().float().cpu().clone()
        out[f"{stem}.alpha"] = torch.tensor(float(alpha))
    return out


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
) -> TrainingResult:
    """Train a LoRA on ``denoiser.network`` and return its weights; the network is left as it was.

    ``caption_for(item, rng)`` gives an item's training caption (trigger word, shuffling, dropout);
    with ``rng=None`` it must be deterministic. ``random_captions`` says whether it uses ``rng`` at all
    (if not, every caption is encoded once). Without it the item's raw caption is used.
    """
    if training.mixed_precision not in MIXED_PRECISION_CHOICES:
        raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION_CHOICES}, not {training.mixed_precision!r}")
    training = replace(training, mixed_precision=resolve_precision(training.mixed_precision, denoiser.device))
    if not data.items:
        raise TrainingError("the dataset has no images")
    started = time.perf_counter()
    device = denoiser.device
    total_steps = training.resolved_steps(samples_per_epoch(data))
    caption_rng = random.Random(training.seed)
    order_rng = random.Random(training.seed + 1)
    generator = torch.Generator().manual_seed(training.seed)
    caption: CaptionFunction = caption_for or (lambda item, rng: item.caption)
    randomised = caption_for is not None and random_captions

    with torch.inference_mode(False), torch.enable_grad():
        latents = encode_latents(data, codec)
        texts = _TextCache(text_encoder)
        fixed_captions = [caption(item, None) for item in data.items]
        if not randomised:
            texts.get(fixed_captions)
        encode_seconds = time.perf_counter() - started

        network = denoiser.network
        with autograd_safe_weights(network):
            adapter = inject_lora(network, lora, training.seed)
            try:
                with _gradient_checkpointing(network, training.gradient_checkpointing):
                    result = _optimise(
                        denoiser, adapter, latents, texts, data, fixed_captions, caption, randomised,
                        caption_rng, order_rng, generator, training, total_steps, key_namer, on_step,
                    )
            finally:
                adapter.remove()
    result.total_steps = total_steps
    result.mixed_precision = training.mixed_precision
    result.seconds = time.perf_counter() - started
    result.encode_seconds = encode_seconds
    result.weights.metadata.update(metadata or {})
    return result


def _optimise(
    denoiser: Denoiser,
    adapter: InjectedAdapter,
    latents: list[torch.Tensor],
    texts: _TextCache,
    data: TrainingData,
    fixed_captions: list[str],
    caption: CaptionFunction,
    randomised: bool,
    caption_rng: random.Random,
    order_rng: random.Random,
    generator: torch.Generator,
    training: TrainingConfig,
    total_steps: int,
    key_namer: KeyNamer,
    on_step: Callable[[StepReport], None] | None,
) -> TrainingResult:
    device = denoiser.device
    params = adapter.parameters()
    optimizer = torch.optim.AdamW(params, lr=training.learning_rate, weight_decay=training.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=training.mixed_precision == "fp16")
    batches = _batches(data, training.batch_size, order_rng)
    result = TrainingResult(weights=LoRAWeights())
    network = denoiser.network
    was_training = network.training
    network.train()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), contextlib.ExitStack() as in_place_safe:
            torch.manual_seed(training.seed)  # LoRA dropout draws from the global stream
            for step in range(1, total_steps + 1):
                batch = [next(batches) for _ in range(training.gradient_accumulation)]
                try:
                    step_loss = _forward_backward(
                        denoiser, adapter, latents, texts, data, fixed_captions, caption, randomised, caption_rng,
                        generator, training, scaler, optimizer, batch, step, key_namer,
                    )
                except RuntimeError as error:
                    if step > 1 or not _is_inplace_autograd_error(error):
                        raise
                    # Found out on the first step: the network writes activations in place.
                    log.info("the network modifies activations in place: keeping copies for the backward pass")
                    in_place_safe.enter_context(_keep_saved_activations())
                    step_loss = _forward_backward(
                        denoiser, adapter, latents, texts, data, fixed_captions, caption, randomised, caption_rng,
                        generator, training, scaler, optimizer, batch, step, key_namer,
                    )
                if training.max_grad_norm > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, training.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                learning_rate = optimizer.param_groups[0]["lr"]
                result.losses.append(step_loss)
                result.learning_rates.append(learning_rate)
                result.steps = step
                if on_step is not None:
                    on_step(StepReport(step, total_steps, step_loss, learning_rate))
    finally:
        network.train(was_training)
    result.weights = LoRAWeights(extract_weights(adapter, key_namer))
    return result


def _forward_backward(
    denoiser: Denoiser,
    adapter: InjectedAdapter,
    latents: list[torch.Tensor],
    texts: _TextCache,
    data: TrainingData,
    fixed_captions: list[str],
    caption: CaptionFunction,
    randomised: bool,
    caption_rng: random.Random,
    generator: torch.Generator,
    training: TrainingConfig,
    scaler: torch.amp.GradScaler,
    optimizer: torch.optim.Optimizer,
    batch: list[list[int]],
    step: int,
    key_namer: KeyNamer,
) -> float:
    """Gradients of one optimizer step (over ``gradient_accumulation`` batches); returns its loss."""
    device = denoiser.device
    optimizer.zero_grad(set_to_none=True)
    step_loss = 0.0
    for indices in batch:
        x0 = torch.stack([latents[i] for i in indices]).to(device)
        if randomised:
            captions = [caption(data.items[i], caption_rng) for i in indices]
        else:
            captions = [fixed_captions[i] for i in indices]
        text = {k: v.to(device) for k, v in _concat_text(texts.get(captions)).items()}
        noise = sample_noise(x0, generator, training.noise_offset)
        sigma = sample_sigmas(denoiser.training_sigmas, x0.shape[0], generator).to(device)
        noisy = add_noise(x0, noise, sigma, denoiser.prediction)
        with _autocast(device, training.mixed_precision):
            estimate = denoiser.denoise(noisy, sigma, text)
        loss = diffusion_loss(estimate, x0, sigma, denoiser.prediction, training.min_snr_gamma)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the loss became {loss.item()} at step {step}: training stopped. The LoRA keeps the "
                "weights of the last good step. Lower the learning rate, or use bf16/fp32 instead of fp16.",
                LoRAWeights(extract_weights(adapter, key_namer)),
                step - 1,
            )
        scaler.scale(loss / training.gradient_accumulation).backward()
        step_loss += loss.item() / training.gradient_accumulation
    return step_loss
