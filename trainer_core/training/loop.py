"""The training loop: encode once, then optimise a LoRA on the denoiser's own loss.

The loop knows nothing of where the model comes from. It takes a ``Denoiser``, a ``TextEncoder`` and
a ``LatentCodec`` (see ``trainer_core.models.protocols``), a dataset (``trainer_core.data.dataset.Dataset``), and reports
each optimizer step to ``on_step``; if ``on_step`` raises (ComfyUI's Cancel does), training stops
there and the network is restored all the same.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..adapters.adapter_types import export_layer
from ..adapters.config import LoRAConfig
from ..adapters.export import KeyNamer, LoRAWeights, default_key_name, default_text_key_name, save_lora
from ..adapters.inject import InjectedAdapter, autograd_safe_weights, inject_adapter
from ..models.protocols import Denoiser, LatentCodec, TextEncoder
from .activations import is_inplace_autograd_error, keep_saved_activations
from .checkpoints import CheckpointPolicy, load_training_state, restore_random_state, save_training_state
from .config import MIXED_PRECISION_CHOICES, TrainingConfig
from .ema import AdapterEMA, averaged
from .encoding import TextCache, concat_text, encode_latents
from .losses import add_noise, diffusion_loss, sample_noise, sample_sigmas
from .memory import OptimizerPlacement, check_state_on_cpu, optimizer_state_device
from .optimizers import OptimizerConfig, build_optimizer, effective_learning_rate
from .schedulers import SchedulerConfig, build_scheduler
from .text_encoder import (
    LiveText,
    parameter_groups,
    restore_text_encoder_state,
    text_encoder_lora,
    text_encoder_state,
    with_clip_skip,
)

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
    """What the loop reads of a dataset (``trainer_core.data.dataset.Dataset`` provides it)."""

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
    checkpoints: list[Path] = field(default_factory=list)
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


def _batches(data: TrainingData, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless epochs: every item ``repeats`` times, shuffled, batched within one bucket.

    Epoch ``e`` is shuffled by its own ``Random((seed, e))``, so the sequence is a pure function of the
    seed and a resumed run can skip to any position."""
    epoch = 0
    while True:
        generator = random.Random(f"{seed}:{epoch}")
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for index, item in enumerate(data.items):
            by_bucket.setdefault(tuple(item.bucket), []).extend([index] * max(1, int(item.repeats)))
        batches: list[list[int]] = []
        for indices in by_bucket.values():
            generator.shuffle(indices)
            batches.extend(indices[i : i + batch_size] for i in range(0, len(indices), batch_size))
        generator.shuffle(batches)
        yield from batches
        epoch += 1


def samples_per_epoch(data: TrainingData) -> int:
    return sum(max(1, int(item.repeats)) for item in data.items)


def extract_weights(adapter: InjectedAdapter, key_namer: KeyNamer) -> dict[str, torch.Tensor]:
    """The adapter's tensors under kohya / LyCORIS keys (fp32 on the CPU), scale recorded as ``.alpha``."""
    out: dict[str, torch.Tensor] = {}
    for name, layer in adapter.layers():
        stem = key_namer(name)
        for suffix, tensor in export_layer(layer, adapter.config).items():
            out[f"{stem}.{suffix}"] = tensor
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
    checkpoints: CheckpointPolicy | None = None,
    resume_from: Path | None = None,
    optimizer: OptimizerConfig | None = None,
    scheduler: SchedulerConfig | None = None,
    text_key_namer: KeyNamer = default_text_key_name,
) -> TrainingResult:
    """Train a LoRA on ``denoiser.network`` and return its weights; the network is left as it was.

    ``caption_for(item, rng)`` gives an item's training caption (trigger word, shuffling, dropout);
    with ``rng=None`` it must be deterministic. ``random_captions`` says whether it uses ``rng`` at all
    (if not, every caption is encoded once). Without it the item's raw caption is used.

    With ``checkpoints``, a LoRA file is written every ``checkpoints.every`` steps and when training
    is cancelled, together with a resume state; ``resume_from`` (such a state file) continues a run:
    adapter weights, optimizer, random streams and the step counter are restored, so N steps + resume
    + N steps equal 2N steps straight.

    ``optimizer`` (default AdamW) and ``scheduler`` (default constant with 5% warmup) take their
    learning rate and weight decay from ``training``.

    ``training.text_encoder_lr`` above 0 also trains a LoRA in ``text_encoder.network`` (see
    ``text_encoder.py``), named with ``text_key_namer``; ``training.clip_skip`` above 1 encodes with
    ``text_encoder.with_clip_skip(n)``.
    """
    if training.mixed_precision not in MIXED_PRECISION_CHOICES:
        raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION_CHOICES}, not {training.mixed_precision!r}")
    training = replace(training, mixed_precision=resolve_precision(training.mixed_precision, denoiser.device))
    if not data.items:
        raise TrainingError("the dataset has no images")
    started = time.perf_counter()
    total_steps = training.resolved_steps(samples_per_epoch(data))
    caption: CaptionFunction = caption_for or (lambda item, rng: item.caption)
    randomised = caption_for is not None and random_captions
    train_text = training.text_encoder_lr > 0
    text_encoder = with_clip_skip(text_encoder, training.clip_skip)

    with torch.inference_mode(False), torch.enable_grad():
        # Read inside: tensors loaded under ComfyUI's inference mode could not be updated by the optimizer.
        resume_state = load_training_state(resume_from) if resume_from is not None else None
        latents = encode_latents(data, codec)
        texts = TextCache(text_encoder)
        fixed_captions = [caption(item, None) for item in data.items]
        if not randomised and not train_text:
            texts.get(fixed_captions)
        encode_seconds = time.perf_counter() - started

        network = denoiser.network
        with autograd_safe_weights(network):
            adapter = inject_adapter(network, lora, training.seed)
            try:
                with contextlib.ExitStack() as stack:
                    text_adapter = None
                    if train_text:  # captions are then encoded every step, through the text encoder's LoRA
                        text_adapter = stack.enter_context(text_encoder_lora(text_encoder, lora, training.seed + 1))
                    stack.enter_context(_gradient_checkpointing(network, training.gradient_checkpointing))
                    run = _TrainingRun(
                        denoiser, adapter, latents, LiveText(text_encoder) if train_text else texts, data,
                        fixed_captions, caption, randomised, training, total_steps, key_namer, metadata or {},
                        optimizer or OptimizerConfig(), scheduler or SchedulerConfig(),
                        text_adapter=text_adapter, text_key_namer=text_key_namer,
                    )
                    if resume_state is not None:
                        run.load_state(resume_state, resume_from)
                    result = run.train(on_step, checkpoints)
            finally:
                adapter.remove()
    result.total_steps = total_steps
    result.mixed_precision = training.mixed_precision
    result.seconds = time.perf_counter() - started
    result.encode_seconds = encode_seconds
    return result


class _TrainingRun:
    """The optimisation of one adapter: its optimizer, random streams and step counter."""

    def __init__(
        self,
        denoiser: Denoiser,
        adapter: InjectedAdapter,
        latents: list[torch.Tensor],
        texts: TextCache | LiveText,
        data: TrainingData,
        fixed_captions: list[str],
        caption: CaptionFunction,
        randomised: bool,
        training: TrainingConfig,
        total_steps: int,
        key_namer: KeyNamer,
        metadata: dict[str, str],
        optimizer: OptimizerConfig,
        scheduler: SchedulerConfig,
        text_adapter: InjectedAdapter | None = None,
        text_key_namer: KeyNamer = default_text_key_name,
    ):
        self.denoiser = denoiser
        self.adapter = adapter
        self.latents = latents
        self.texts = texts
        self.data = data
        self.fixed_captions = fixed_captions
        self.caption = caption
        self.randomised = randomised
        self.training = training
        self.total_steps = total_steps
        self.key_namer = key_namer
        self.metadata = metadata
        self.text_adapter = text_adapter
        self.text_key_namer = text_key_namer
        unet_params = adapter.parameters()
        text_params = text_adapter.parameters() if text_adapter is not None else []
        check_state_on_cpu(optimizer.name, training.optimizer_state_on_cpu)
        state_device = optimizer_state_device(denoiser.device, training.optimizer_state_on_cpu)
        self.placement = OptimizerPlacement(unet_params + text_params, state_device)
        self.params = self.placement.params  # what the optimizer updates: the LoRA's, or copies in RAM
        optimizer = replace(
            optimizer,
            learning_rate=None if optimizer.relative_step else training.learning_rate,
            weight_decay=training.weight_decay,
        )
        optimized = self.params[: len(unet_params)], self.params[len(unet_params) :]
        groups = parameter_groups(optimized[0], optimized[1] if text_adapter is not None else None,
                                  training.text_encoder_lr, set_rate=not optimizer.relative_step)
        self.optimizer = build_optimizer(groups, optimizer, state_device or denoiser.device)
        self.ema = None
        if training.ema_decay > 0:
            self.ema = AdapterEMA(self._ema_parameters(), training.ema_decay, state_device)
        self.scheduler = build_scheduler(self.optimizer, scheduler, total_steps)
        self.scaler = torch.amp.GradScaler(denoiser.device.type, enabled=training.mixed_precision == "fp16")
        self.caption_rng = random.Random(training.seed)
        self.noise_rng = torch.Generator().manual_seed(training.seed)
        self.batches = _batches(data, training.batch_size, training.seed + 1)
        self.step = 0
        self.losses: list[float] = []
        self.learning_rates: list[float] = []
        self.global_rng_state: torch.Tensor | None = None  # dropout's stream, restored on resume
        self.saved_checkpoints: list[Path] = []

    # -- the loop --------------------------------------------------------------------------------

    def train(self, on_step: Callable[[StepReport], None] | None, checkpoints: CheckpointPolicy | None) -> TrainingResult:
        network = self.denoiser.network
        device = self.denoiser.device
        was_training = network.training
        network.train()
        completed = False
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), contextlib.ExitStack() as in_place_safe:
                if self.global_rng_state is not None:
                    torch.set_rng_state(self.global_rng_state)
                else:
                    torch.manual_seed(self.training.seed)  # LoRA dropout draws from the global stream
                while self.step < self.total_steps:
                    batch = [next(self.batches) for _ in range(self.training.gradient_accumulation)]
                    try:
                        loss = self._forward_backward(batch)
                    except RuntimeError as error:
                        if self.step > 0 or not is_inplace_autograd_error(error):
                            raise
                        # Found out on the first step: the network writes activations in place.
                        log.info("the network modifies activations in place: keeping copies for the backward pass")
                        in_place_safe.enter_context(keep_saved_activations())
                        loss = self._forward_backward(batch)
                    self._apply_gradients()
                    self.step += 1
                    self.losses.append(loss)
                    self.learning_rates.append(effective_learning_rate(self.optimizer))
                    if checkpoints is not None and checkpoints.every and self.step % checkpoints.every == 0:
                        self.save_checkpoint(checkpoints)
                    if on_step is not None:
                        on_step(StepReport(self.step, self.total_steps, loss, self.learning_rates[-1]))
                completed = True
        finally:
            network.train(was_training)
            if not completed and checkpoints is not None and self.step > 0:
                # Cancelled or failed: keep what was learned so far, resumable.
                if not self.saved_checkpoints or self.saved_checkpoints[-1] != checkpoints.lora_path(self.step):
                    self.save_checkpoint(checkpoints)
        return TrainingResult(
            weights=self.weights(),
            losses=list(self.losses),
            learning_rates=list(self.learning_rates),
            steps=self.step,
            checkpoints=list(self.saved_checkpoints),
        )

    def _forward_backward(self, batch: list[list[int]]) -> float:
        """Gradients of one optimizer step (over ``gradient_accumulation`` batches); returns its loss."""
        denoiser, training = self.denoiser, self.training
        device = denoiser.device
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for indices in batch:
            x0 = torch.stack([self.latents[i] for i in indices]).to(device)
            if self.randomised:
                captions = [self.caption(self.data.items[i], self.caption_rng) for i in indices]
            else:
                captions = [self.fixed_captions[i] for i in indices]
            text = {k: v.to(device) for k, v in concat_text(self.texts.get(captions)).items()}
            noise = sample_noise(x0, self.noise_rng, training.noise_offset, training.multires_noise_iterations,
                                 training.multires_noise_discount)
            sigma = sample_sigmas(denoiser.training_sigmas, x0.shape[0], self.noise_rng,
                                  training.timestep_sampling).to(device)
            noisy = add_noise(x0, noise, sigma, denoiser.prediction)
            with _autocast(device, training.mixed_precision):
                estimate = denoiser.denoise(noisy, sigma, text)
            loss = diffusion_loss(estimate, x0, sigma, denoiser.prediction, training.min_snr_gamma,
                                  training.loss_type, training.huber_c)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"the loss became {loss.item()} at step {self.step + 1}: training stopped. The LoRA keeps the "
                    "weights of the last good step. Lower the learning rate, or use bf16/fp32 instead of fp16.",
                    self.weights(),
                    self.step,
                )
            self.scaler.scale(loss / training.gradient_accumulation).backward()
            step_loss += loss.item() / training.gradient_accumulation
        return step_loss

    def _apply_gradients(self) -> None:
        self.placement.gradients_to_optimizer()
        if self.training.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.training.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.placement.parameters_to_model()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update()

    # -- weights, checkpoints and resume ------------------------------------------------------------

    def weights(self) -> LoRAWeights:
        """The LoRA to export: the moving average when EMA is on, else the weights of the last step."""
        with averaged(self.ema):
            tensors = extract_weights(self.adapter, self.key_namer)
            if self.text_adapter is not None:
                tensors.update(extract_weights(self.text_adapter, self.text_key_namer))
            return LoRAWeights(tensors, self.metadata)

    def save_checkpoint(self, policy: CheckpointPolicy) -> Path:
        """A LoRA file LoraLoader can load, and the state to resume from (both written atomically)."""
        weights = self.weights()
        weights.metadata.update({"ss_steps": str(self.step), "lora_lab_checkpoint_step": str(self.step)})
        path = policy.lora_path(self.step)
        save_lora(weights, path, overwrite=True)
        save_training_state(policy.state_path, self.state_dict())
        self.saved_checkpoints.append(path)
        if policy.keep_last > 0:
            while len(self.saved_checkpoints) > policy.keep_last:
                self.saved_checkpoints.pop(0).unlink(missing_ok=True)
        return path

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "adapter": {name: p.detach().cpu().clone() for name, p in self._adapter_parameters().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "caption_rng": self.caption_rng.getstate(),
            "noise_rng": self.noise_rng.get_state(),
            "global_rng": torch.get_rng_state(),
            "losses": list(self.losses),
            "learning_rates": list(self.learning_rates),
            "rank": self.adapter.config.rank,
            "adapter_type": self.adapter.config.adapter,
            "targets": list(self.adapter.targets),
            **text_encoder_state(self.text_adapter),
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def load_state(self, state: dict[str, Any], source: Path | None) -> None:
        where = f" ({source})" if source is not None else ""
        adapter_type = state.get("adapter_type", "lora")  # states written before adapter types were LoRA
        if adapter_type != self.adapter.config.adapter:
            raise TrainingError(
                f"the resume state{where} trained a {adapter_type} adapter, this run a {self.adapter.config.adapter}:"
                f" set adapter type to {adapter_type} to resume, or start a new run"
            )
        if state.get("rank") != self.adapter.config.rank or state.get("targets") != list(self.adapter.targets):
            raise TrainingError(
                f"the resume state{where} was trained with rank {state.get('rank')} on other layers; resume with the "
                "same rank, target layers and base model, or start a new run"
            )
        restore_text_encoder_state(self.text_adapter, state, where)
        if state["step"] >= self.total_steps:
            raise TrainingError(
                f"the resume state{where} is at step {state['step']}, and this run has {self.total_steps} steps: "
                "raise steps to continue training"
            )
        with torch.no_grad():
            for name, param in self._adapter_parameters().items():
                param.copy_(state["adapter"][name].to(param.device, param.dtype))
        self.placement.parameters_from_model()
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        elif self.ema is not None:  # the run had no EMA so far: average from here on
            self.ema = AdapterEMA(self._ema_parameters(), self.ema.decay, self.placement.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.caption_rng.setstate(restore_random_state(state["caption_rng"]))
        self.noise_rng.set_state(state["noise_rng"])
        self.global_rng_state = state["global_rng"]
        self.step = int(state["step"])
        self.losses = list(state["losses"])
        self.learning_rates = list(state["learning_rates"])
        for _ in range(self.step * self.training.gradient_accumulation):
            next(self.batches)

    def _adapter_parameters(self) -> dict[str, torch.nn.Parameter]:
        return self.adapter.named_parameters()

    def _ema_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Everything exported: the UNet's adapter and, when trained, the text encoder's."""
        parameters = dict(self._adapter_parameters())
        if self.text_adapter is not None:
            parameters.update({f"text_encoder.{k}": v for k, v in self.text_adapter.named_parameters().items()})
        return parameters
