"""What training hands back: a report per optimizer step, the result of a run, and the errors a user
must act on (``NonFiniteLossError`` carries the last good LoRA)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..adapters.export import LoRAWeights
from .encoding_cache import EncodingCounts


class TrainingError(RuntimeError):
    """Training stopped for a reason the user must act on."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; ``weights`` holds the last good LoRA."""

    def __init__(self, message: str, weights: LoRAWeights, step: int):
        super().__init__(message)
        self.weights = weights
        self.step = step


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
    validation_losses: dict[int, float] = field(default_factory=dict)  # step -> held-out loss (validation.py)
    best_checkpoint: tuple[int, Path] | None = None  # (step, file) of the lowest held-out loss among checkpoints
    batch_files: list[tuple[str, ...]] = field(default_factory=list)  # per step: the image files it trained on
    encoding: EncodingCounts | None = None  # latents and captions read from the encoding cache, or encoded

    def checkpoint_steps(self) -> list[int]:
        """The step of each checkpoint file (named ``<run>_step<NNNNNN>.safetensors``)."""
        return [int(path.stem.rsplit("_step", 1)[1]) for path in self.checkpoints]
