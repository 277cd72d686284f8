"""What is trained: the adapter's type and shape (``LoRAConfig``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..fields import described

ADAPTER_CHOICES: tuple[str, ...] = ("lora", "loha", "lokr", "dora")
# peft's LoHa and LoKr layers have no dropout on their input (only rank/module dropout, which LyCORIS
# files do not record), so 'dropout' applies to these two only.
ADAPTERS_WITH_DROPOUT: tuple[str, ...] = ("lora", "dora")


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
        "LoRA alpha: the LoRA is scaled by alpha / rank. alpha = rank gives scale 1; rank/2 is gentler.", 16.0
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
