"""The socket types LoRA Lab's nodes pass between each other.

``LORA_MODEL`` is ComfyUI's own type (a dict of LoRA tensors), so ComfyUI's ``LoraModelLoader``
accepts what TrainLoRA gives; our value is a ``trainer_core.adapters.export.LoRAWeights`` (a dict that also
carries the file metadata).
"""

from __future__ import annotations

from comfy_api.latest import io

Dataset = io.Custom("LORALAB_DATASET")
LoraModel = io.Custom("LORA_MODEL")
# A trainer_core.training.optimizers.OptimizerConfig whose name, learning rate and 8-bit fallback TrainLoRA sets.
OptimizerSettings = io.Custom("LORALAB_OPTIMIZER_SETTINGS")
