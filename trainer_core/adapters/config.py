"""What is trained: the adapter's type and shape (``LoRAConfig``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..fields import described

ADAPTER_CHOICES: tuple[str, ...] = ("lora", "loha", "lokr", "dora")
# peft's LoHa and LoKr layers have no dropout on their input (only rank/module dropout, which LyCORIS
# files do not record), so 'dropout' applies to these two only.
ADAPTERS_WITH_DROPOUT: tuple[str, ...] = ("lora", "dora")
# Block groups with a learning-rate weight each (``blocks.py`` says which layers belong to which).
BLOCK_WEIGHT_FIELDS: tuple[str, ...] = (
    "input_blocks_lr_weight", "middle_block_lr_weight", "output_blocks_lr_weight",
    "double_blocks_lr_weight", "single_blocks_lr_weight",
)
_BLOCK_WEIGHT_HELP = (
    " learning rate = learning_rate x this weight (1 = the full rate, 0.5 = half, 0 = not trained: its adapters"
    " stay at their no-op start)."
)


@dataclass(frozen=True)
class LoRAConfig:
    """What is trained: the adapter's type and shape."""

    adapter: str = described(
        "Adapter type. lora: the standard low-rank pair, loads everywhere. loha (LyCORIS LoHa, Hadamard product of"
        " two low-rank pairs) and lokr (LyCORIS LoKr, Kronecker product): more expressive per parameter, popular"
        " for styles. dora: LoRA with the weight split into direction and magnitude; closer to full fine-tuning,"
        " slower per step. All four load with ComfyUI's LoraLoader.",
        "lora",
    )
    rank: int = described("LoRA rank (network dim): how much the LoRA can learn. 8-32 for most subjects.", 16)
    alpha: float = described(
        "LoRA alpha: the LoRA is scaled by alpha / rank. The default 32 at rank 16 is scale 2, for short runs;"
        " alpha = rank gives scale 1, rank/2 is gentler (the presets' values for longer runs).", 32.0
    )
    dropout: float = described(
        "Dropout inside the LoRA layers during training only (0 = off, 0.1 typical). lora and dora only.", 0.0
    )
    rslora: bool = described(
        "Rank-stabilised LoRA: scale by alpha / sqrt(rank) instead of alpha / rank, so high ranks still learn."
        " Saved with an adjusted alpha, so every loader applies it correctly.",
        False,
    )
    target: str = described(
        "Which layers get a LoRA: 'attention' = the attention and feed-forward layers of the transformer blocks,"
        " with the modulation layers inside them (kohya's default); 'all_linear' = every linear layer of the"
        " network's blocks, also those between the transformer blocks (a UNet's time projections, Flux.2's"
        " shared modulation). Neither trains the input projections (Flux's img_in / txt_in), the time, text"
        " or pooled-vector embedders, or the output layer: kohya trains those only when asked.",
        "attention",
    )
    conv_rank: int = described(
        "LoCon: also train the convolutions of the UNet's ResBlocks, as kohya's conv_dim and LyCORIS do: their 3x3"
        " convolutions and those of the down- and upsamplers get an adapter of this rank, their 1x1 skip"
        " convolutions one of the LoRA's own rank and alpha (both kohya and LyCORIS treat a 1x1 convolution as a"
        " linear layer). 0 = off (the default). 4-16 typical; more texture and colour for styles, a larger file."
        " Models without convolutions (DiTs) have none: a console note says so and training goes on.",
        0,
    )
    conv_alpha: float = described(
        "LoCon alpha: the convolution adapters are scaled by conv_alpha / conv_rank (kohya's and LyCORIS' default"
        " alpha is 1). Used only when conv_rank is above 0.",
        1.0,
    )
    input_blocks_lr_weight: float = described(
        "Block weight of a UNet's input (down) blocks, kohya's down_lr_weight:" + _BLOCK_WEIGHT_HELP, 1.0
    )
    middle_block_lr_weight: float = described(
        "Block weight of a UNet's middle block, kohya's mid_lr_weight:" + _BLOCK_WEIGHT_HELP, 1.0
    )
    output_blocks_lr_weight: float = described(
        "Block weight of a UNet's output (up) blocks, kohya's up_lr_weight:" + _BLOCK_WEIGHT_HELP, 1.0
    )
    double_blocks_lr_weight: float = described(
        "Block weight of a DiT's double-stream blocks (Flux, Flux.2, Chroma, HunyuanVideo, HiDream, AuraFlow):"
        + _BLOCK_WEIGHT_HELP + " DiTs with one kind of block (SD3, Qwen-Image, Wan, Lumina 2, ...) have no groups.",
        1.0,
    )
    single_blocks_lr_weight: float = described(
        "Block weight of a DiT's single-stream blocks (Flux, Flux.2, Chroma, HunyuanVideo, HiDream, AuraFlow):"
        + _BLOCK_WEIGHT_HELP,
        1.0,
    )

    def block_lr_weights(self) -> dict[str, float]:
        """Each block group's learning-rate weight, by field name."""
        return {name: float(getattr(self, name)) for name in BLOCK_WEIGHT_FIELDS}

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be a whole number of at least 1, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be above 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be from 0 up to (not including) 1, got {self.dropout!r}")
        if self.adapter not in ADAPTER_CHOICES:
            raise ValueError(f"adapter type must be one of {', '.join(ADAPTER_CHOICES)}, not {self.adapter!r}")
        if self.dropout and self.adapter not in ADAPTERS_WITH_DROPOUT:
            raise ValueError(
                f"lora dropout {self.dropout} cannot be used with the {self.adapter} adapter type (its layers have no"
                " input dropout): set lora dropout to 0, or choose adapter type lora or dora"
            )
        if not isinstance(self.conv_rank, int) or self.conv_rank < 0:
            raise ValueError(f"conv_rank must be a whole number of 0 (off) or more, got {self.conv_rank!r}")
        if not self.conv_alpha > 0:
            raise ValueError(f"conv_alpha must be above 0, got {self.conv_alpha!r}")
        weights = self.block_lr_weights()
        for name, value in weights.items():
            if not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a finite number of 0 or more, got {value!r}")
        if not any(weights.values()):
            raise ValueError(
                "every block learning-rate weight is 0, so nothing would train: set at least one of "
                + ", ".join(weights) + " above 0 (1 = the full learning rate)"
            )
