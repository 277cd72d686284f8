"""The socket types LoRA Lab's nodes pass between each other.

``LORA_MODEL`` is ComfyUI's own type (a dict of LoRA tensors), so ComfyUI's ``LoraModelLoader``
accepts what TrainLoRA gives; our value is a ``trainer_core.adapters.export.LoRAWeights`` (a dict that also
carries the file metadata).
"""

from __future__ import annotations

from comfy_api.latest import io

Dataset = io.Custom("LORALAB_DATASET")
LoraModel = io.Custom("LORA_MODEL")
# The optimizer settings node's NodeSettings (its widget values); TrainLoRA builds the OptimizerConfig.
OptimizerSettings = io.Custom("LORALAB_OPTIMIZER_SETTINGS")
# nodes.train_settings.NodeSettings: a settings node's widget values, for the Train LoRA input of that name.
LossSettings = io.Custom("LORALAB_LOSS_SETTINGS")
MemorySettings = io.Custom("LORALAB_MEMORY_SETTINGS")
AdapterSettings = io.Custom("LORALAB_ADAPTER_SETTINGS")
SampleSettings = io.Custom("LORALAB_SAMPLE_SETTINGS")
TextEncoderSettings = io.Custom("LORALAB_TEXT_ENCODER_SETTINGS")
