"""How a LoRA is trained (``TrainingConfig``), as a frozen dataclass.

Every field carries its help text (``trainer_core.fields``); the nodes reuse it as the tooltip so the
canvas and the headless runner describe a setting the same way. Defaults follow the guides in
``ANCHORS.md`` (the UNet learning rate 5e-4 some guides use, min-SNR gamma 5; the presets carry the
1e-4 of the longer runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..fields import described

MixedPrecision = Literal["auto", "fp32", "bf16", "fp16"]
MIXED_PRECISION_CHOICES: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainingConfig:
    """How it is trained."""

    steps: int = described(
        "Optimizer steps. 0 = derive from the dataset: images x repeats x epochs / batch size.", 0
    )
    epochs: int = described("Used only when steps is 0: how many passes over the dataset (with repeats).", 10)
    learning_rate: float = described(
        "Learning rate of the LoRA weights. 5e-4 (the guides' UNet rate) teaches a short run; the presets"
        " use 1e-4 for their longer runs.", 5e-4
    )
    text_encoder_lr: float = described(
        "Learning rate of a LoRA in the text encoder(s): the CLIP encoders' attention and MLP layers (T5's too"
        " with train_t5; language-model encoders are refused). 0 = the text encoder is not trained: UNet only (the default). The guides use 1e-4 with the UNet at 5e-4, or 5e-5 with it at 1e-4. With"
        " Prodigy it scales Prodigy's own step size like learning_rate does: use about 0.5-1.0 there.",
        0.0,
    )
    clip_skip: int = described(
        "Clip skip: captions are encoded with the text encoder's output this many layers from the end, as"
        " CLIPSetLastLayer -N does. 1 = the CLIP as connected (the last layer on SD1.5; SDXL already uses the"
        " penultimate); 2 = the penultimate (many anime models). Generate with the same setting.",
        1,
    )
    train_t5: bool = described(
        "With text_encoder_lr above 0, also train a LoRA in the T5-XXL text encoder (SD3, Flux, HiDream, Chroma),"
        " as kohya's train_t5xxl does. Off (kohya's default): only the CLIP encoders train, T5 keeps its"
        " weights; a 4.7 B-parameter T5 with gradients needs far more memory. Saved as lora_te3_* (ComfyUI,"
        " kohya); Chroma's lone T5 as lora_te1_*. Language-model encoders (Qwen-Image, Z-Image, Lumina 2,"
        " Flux.2, HiDream's Llama) never train.",
        False,
    )
    batch_size: int = described("Images per step. Images of one batch come from one aspect-ratio bucket.", 1)
    gradient_accumulation: int = described(
        "Add up gradients over this many batches before each optimizer step (effective batch = batch x this).",
        1,
    )
    seed: int = described("Seed for noise, timesteps, shuffling and LoRA initialisation: same seed, same LoRA.", 0)
    mixed_precision: str = described(
        "Compute precision: auto (bf16 on GPUs that have it, else fp16; fp32 on CPU), fp32 (exact, slow on"
        " GPU), bf16 (RTX 30xx and newer), fp16 (with loss scaling).",
        "auto",
    )
    gradient_checkpointing: bool = described(
        "Recompute activations in the backward pass: much less memory, about 20% slower.", False
    )
    optimizer_state_on_cpu: bool = described(
        "Keep the optimizer's state (and an fp32 copy of the LoRA it updates) in RAM instead of on the GPU:"
        " saves about twice the LoRA's size in GPU memory with Adam-type optimizers (more than the LoRA"
        " itself). Costs two copies of the LoRA between GPU and RAM and an optimizer step on the CPU per"
        " step: slower, more so for large ranks. Same results. Nothing to move when training on the CPU."
        " Not with the 8-bit optimizers (their state must stay on the GPU).",
        False,
    )
    ema_decay: float = described(
        "Keep an exponential moving average (EMA) of the LoRA's weights and export that instead of the last"
        " step's: smoother, often less overfit. 0 = off; 0.999 typical. The average starts short and grows to"
        " this decay (diffusers' warmup). The EMA (fp32, beside the LoRA) is what the output, the saved file"
        " and every checkpoint hold, and resume continues it; sample images during training show the raw"
        " weights. Costs one more copy of the LoRA in memory.",
        0.0,
    )
    min_snr_gamma: float = described(
        "Min-SNR weighting gamma: evens out the loss over noise levels (5 is the guides' value; 0 = off).", 5.0
    )
    noise_offset: float = described(
        "Noise offset: lets the LoRA learn very dark or bright images (0.03-0.1; 0 = off).", 0.0
    )
    loss_type: str = described(
        "Loss on the prediction error: mse (standard), l1 (less pulled by outliers), huber (mse near 0, l1 far out).",
        "mse",
    )
    huber_c: float = described("Huber loss only: where the loss turns from quadratic to linear (kohya's 0.1).", 0.1)
    timestep_sampling: str = described(
        "How noise levels are drawn: uniform over the model's schedule, or logit_normal (more middle levels; SD3's"
        " and many Flux trainers' choice).",
        "uniform",
    )
    multires_noise_iterations: int = described(
        "Multires (pyramid) noise: add noise at this many lower resolutions (6-10 typical; 0 = off).", 0
    )
    multires_noise_discount: float = described("Multires noise: weight of each lower resolution (0.3 typical).", 0.3)
    weight_decay: float = described("AdamW weight decay.", 0.01)
    masked_loss: bool = described(
        "Masked loss (kohya's --masked_loss): each image's mask weighs its loss, so the loss ignores masked-out"
        " pixels (black in <name>_mask.png beside the image, else transparent in its alpha channel). The mask is"
        " averaged over each latent cell; images without one train on every pixel. Off = masks are ignored.",
        False,
    )
    prior_loss_weight: float = described(
        "Weight of the regularisation (class) images' loss against the training images' (kohya's"
        " prior_loss_weight, 1.0). Only with regularization_images connected on Train LoRA.",
        1.0,
    )
    max_grad_norm: float = described("Clip the gradient norm to this value (0 = no clipping).", 1.0)

    def __post_init__(self) -> None:
        for name in ("steps", "epochs", "batch_size", "gradient_accumulation", "seed", "clip_skip"):
            value = getattr(self, name)
            low = 0 if name in ("steps", "seed") else 1
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be a whole number of at least {low}, got {value!r}")
        if self.loss_type not in ("mse", "l1", "huber"):
            raise ValueError(f"loss_type must be mse, l1 or huber, got {self.loss_type!r}")
        if self.timestep_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"timestep_sampling must be uniform or logit_normal, got {self.timestep_sampling!r}")
        if not isinstance(self.multires_noise_iterations, int) or self.multires_noise_iterations < 0:
            raise ValueError(f"multires_noise_iterations must be 0 or more, got {self.multires_noise_iterations!r}")
        for name in ("learning_rate", "text_encoder_lr", "min_snr_gamma", "noise_offset", "weight_decay", "max_grad_norm", "huber_c",
                     "multires_noise_discount", "prior_loss_weight"):
            value = getattr(self, name)
            if not value >= 0 or value == float("inf"):
                raise ValueError(f"{name} must be a finite number of 0 or more, got {value!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(
                f"ema_decay must be 0 (off) or a number below 1 such as 0.999, got {self.ema_decay!r}"
            )

    def resolved_steps(self, samples_per_epoch: int, processes: int = 1) -> int:
        """The step count training will run: ``steps`` or images x repeats x epochs / global batch, where
        one step trains on batch x gradient_accumulation x processes images (data parallel)."""
        if self.steps > 0:
            return self.steps
        per_step = self.batch_size * self.gradient_accumulation * processes
        return max(1, -(-samples_per_epoch * self.epochs // per_step))
