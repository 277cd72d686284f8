"""LoRA Lab's ComfyUI nodes: thin V3 nodes over ``trainer_core``.

Only this package imports ComfyUI. Each node module exposes its node classes; this list is what
``comfy_entrypoint`` registers.
"""

from __future__ import annotations

from .auto_caption import AutoCaption
from .load_dataset import LoadDataset
from .save_checkpoint import SaveCheckpoint
from .stack_compare import CompareLoRAStack
from .strength_sweep import TestLoRAStrengthSweep
from .train_lora import SETTINGS_NODES, TrainLoRA

NODE_CLASSES = [
    LoadDataset,
    AutoCaption,
    TrainLoRA,
    *SETTINGS_NODES,  # its settings nodes, in the order of its settings inputs
    SaveCheckpoint,
    TestLoRAStrengthSweep,
    CompareLoRAStack,
]
