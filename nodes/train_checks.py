"""Train LoRA's checks made before anything runs: its settings inputs in order, inputs an old API graph still
gives it directly, and combinations of optimizer, adapter type and settings that cannot train."""

from __future__ import annotations

from typing import Any

from ..trainer_core.adapters.config import LoRAConfig
from ..trainer_core.training.memory import check_state_on_cpu
from ..trainer_core.training.optimizers import OptimizerConfig, check_optimizer_available
from . import bridge
from .optimizer_settings import LoRALabOptimizerSettings
from .train_settings import (
    LoRALabAdapterSettings,
    LoRALabLossSettings,
    LoRALabMemorySettings,
    LoRALabSampleSettings,
    LoRALabTextEncoderSettings,
    moved_inputs_message,
)

# In the order of Train LoRA's settings inputs.
SETTINGS_NODES = [
    LoRALabOptimizerSettings,
    LoRALabLossSettings,
    LoRALabMemorySettings,
    LoRALabAdapterSettings,
    LoRALabSampleSettings,
    LoRALabTextEncoderSettings,
]


def refuse_moved_inputs(prompt: dict[str, Any] | None, node_id: str | None) -> None:
    """An API graph written before the settings nodes may still give Train LoRA a moved input, which
    ComfyUI drops without a word: stop, and say where each one lives now."""
    if not prompt or node_id is None:
        return
    given = prompt.get(node_id, {}).get("inputs", {})
    message = moved_inputs_message(SETTINGS_NODES, given)
    if message is not None:
        raise ValueError(message)


def combination_problem(optimizer: str | None, adapter_type: str | None, settings: dict[str, Any]) -> str | None:
    """Why Train LoRA's optimizer and adapter type cannot train with these settings-node values (None if they
    can). ``settings`` holds the values known so far: a setting missing from it is not checked."""
    if adapter_type is not None:
        try:
            LoRAConfig(adapter=adapter_type, dropout=settings.get("lora_dropout") or 0.0)
        except ValueError as error:
            return f"adapter_type: {error}"
    if optimizer is not None and settings.get("optimizer_state_on_cpu"):
        try:
            check_state_on_cpu(optimizer, True)
        except ValueError as error:
            return str(error)
    problem = bridge.base_weights_problem(settings.get("base_weights"))
    if problem is not None:
        return problem
    if optimizer is None or settings.get("allow_8bit_fallback", True):
        return None
    import comfy.model_management

    try:
        check_optimizer_available(OptimizerConfig(name=optimizer), comfy.model_management.get_torch_device())
    except (ImportError, RuntimeError, ValueError) as error:
        return f"optimizer: {error}"
    return None
