"""The state of one training run: the adapter's optimizer, scheduler, loss scaler and moving average,
its random streams, its batches and its step counter.

``step`` moves a run forward by one optimizer step, ``bookkeeping`` exports, checkpoints and resumes
it; ``loop`` drives both.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..adapters.export import KeyNamer, default_text_key_name
from ..adapters.inject import InjectedAdapter
from ..models.protocols import Denoiser, TextEmbedding
from .block_weights import check_block_weights_with, optimizer_groups, weighted_parameters
from .config import TrainingConfig
from .ema import AdapterEMA
from .encoding import TextCache
from .epochs import CaptionFunction, TrainingData, batches, loss_weights
from .memory import OptimizerPlacement, check_state_on_cpu, optimizer_state_device
from .optimizers import OptimizerConfig, build_optimizer
from .parallel import SingleProcess
from .schedulers import SchedulerConfig, build_scheduler
from .text_encoder import LiveText
from .validation import HeldOut


class TrainingRun:
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
        parallel: SingleProcess | None = None,
        latent_masks: list[torch.Tensor | None] | None = None,
    ):
        self.parallel = parallel or SingleProcess(denoiser.device)
        self.denoiser = denoiser
        self.adapter = adapter
        self.latents = latents
        self.latent_masks = latent_masks or []  # per item at latent size, with masked loss (masked_loss.py)
        self.loss_weights = loss_weights(data)  # prior_loss_weight for regularisation images
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
        weighted = weighted_parameters(adapter)  # block weights: 0-weighted groups frozen, the rest by weight
        check_block_weights_with(optimizer.relative_step, [weight for weight, _ in weighted])
        unet_params = [param for _, params in weighted for param in params]
        text_params = text_adapter.parameters() if text_adapter is not None else []
        self.trainable = unet_params + text_params  # the model's adapter parameters: their gradients are summed
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
        groups = optimizer_groups(optimized[0], [(weight, len(params)) for weight, params in weighted],
                                  optimized[1] if text_adapter is not None else None, training.learning_rate,
                                  training.text_encoder_lr, set_rate=not optimizer.relative_step)
        self.optimizer = build_optimizer(groups, optimizer, state_device or denoiser.device)
        self.ema = None
        if training.ema_decay > 0:
            self.ema = AdapterEMA(self.ema_parameters(), training.ema_decay, state_device)
        self.scheduler = build_scheduler(self.optimizer, scheduler, total_steps)
        self.scaler = torch.amp.GradScaler(denoiser.device.type, enabled=training.mixed_precision == "fp16")
        self.caption_rng = random.Random(training.seed)
        self.noise_rng = torch.Generator().manual_seed(training.seed)
        # Every process walks the same global batches and takes its share of each (``parallel.share``).
        self.global_batch_size = training.batch_size * self.parallel.world_size
        self.batches = batches(data, self.global_batch_size, training.seed + 1)
        self.step = 0
        self.losses: list[float] = []
        self.step_items: list[tuple[int, ...]] = []  # the dataset items of each step (``epochs.next_step_batch``)
        self.learning_rates: list[float] = []
        self.global_rng_state: torch.Tensor | None = None  # dropout's stream, restored on resume
        self.saved_checkpoints: list[Path] = []
        self.streams_at_step_start: dict[str, Any] | None = None  # what a checkpoint taken mid-step resumes from
        self.first_frames: list[TextEmbedding] | None = None  # per item, for image-to-video models (first_frame.py)
        self.validation: HeldOut | None = None  # held-out images (validation.py), None = no validation
        self.validation_losses: dict[int, float] = {}  # step -> held-out loss
        self.validated_checkpoints: dict[int, float] = {}  # step of a saved checkpoint -> its held-out loss

    def random_streams(self) -> dict[str, Any]:
        """The random streams a resumed run continues: captions, noise and levels, and dropout's (global)."""
        return {
            "caption_rng": self.caption_rng.getstate(),
            "noise_rng": self.noise_rng.get_state(),
            "global_rng": torch.get_rng_state(),
        }

    def adapter_parameters(self) -> dict[str, torch.nn.Parameter]:
        return self.adapter.named_parameters()

    def ema_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Everything exported: the UNet's adapter and, when trained, the text encoder's."""
        parameters = dict(self.adapter_parameters())
        if self.text_adapter is not None:
            parameters.update({f"text_encoder.{k}": v for k, v in self.text_adapter.named_parameters().items()})
        return parameters
