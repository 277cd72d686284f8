"""LoRA Lab's ComfyUI nodes: thin V3 nodes over ``trainer_core``.

Only this package imports ComfyUI. Each node module exposes its node classes; this list is what
``comfy_entrypoint`` registers.
"""

from __future__ import annotations

from .auto_caption import AutoCaption
from .load_dataset import LoadDataset
from .optimizer_settings import LoRALabOptimizerSettings
from .save_checkpoint import SaveCheckpoint
from .stack_compare import CompareLoRAStack
from .strength_sweep import TestLoRAStrengthSweep
from .train_lora import TrainLoRA
from .train_settings import (
    LoRALabAdapterSettings,
    LoRALabLossSettings,
    LoRALabMemorySettings,
    LoRALabSampleSettings,
    LoRALabTextEncoderSettings,
)

NODE_CLASSES = [
    LoadDataset,
    AutoCaption,
    TrainLoRA,
    LoRALabOptimizerSettings,
    LoRALabLossSettings,
    LoRALabMemorySettings,
    LoRALabAdapterSettings,
    LoRALabSampleSettings,
    LoRALabTextEncoderSettings,
    SaveCheckpoint,
    TestLoRAStrengthSweep,
    CompareLoRAStack,
]
