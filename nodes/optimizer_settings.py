"""LoRA Lab Optimizer Settings: the optimizer's finer settings, for Train LoRA's optimizer_settings input."""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..trainer_core.fields import default_of, help_text
from ..trainer_core.training.config import TrainingConfig
from ..trainer_core.training.optimizer_settings import USED_BY, for_optimizer, parse_betas, used_by_text
from ..trainer_core.training.optimizers import OptimizerConfig
from ..trainer_core.training.schedulers import SchedulerConfig
from .train_settings import SettingsNode, settings_schema
from .types import OptimizerSettings

# What the core's help text says in terms of its own config, said for the canvas.
_CANVAS_NOTES = {
    "betas": "Write two numbers, e.g. '0.9, 0.99'; empty = the optimizer's own.",
    "relative_step": "On: Train LoRA's learning_rate and lr_scheduler are not used.",
}


def _tooltip(name: str) -> str:
    note = f" {_CANVAS_NOTES[name]}" if name in _CANVAS_NOTES else ""
    return f"{help_text(OptimizerConfig, name)}{note} {used_by_text(name)}"


def _default(name: str):
    return default_of(OptimizerConfig, name)


class LoRALabOptimizerSettings(SettingsNode):
    SOCKET = "optimizer_settings"
    SOCKET_TYPE = OptimizerSettings

    @classmethod
    def define_schema(cls) -> io.Schema:
        return settings_schema(
            cls,
            "LoraLabOptimizerSettings",
            "LoRA Lab Optimizer Settings",
            "The optimizer's finer settings, its warmup and EMA. Train LoRA's optimizer input still picks the "
            "optimizer; settings it does not use are ignored (each tooltip says which optimizers use it).",
            [
                io.Float.Input(
                    "weight_decay",
                    default=_default("weight_decay"),
                    min=0.0,
                    max=10.0,
                    step=0.001,
                    round=1e-6,
                    tooltip=_tooltip("weight_decay"),
                ),
                io.String.Input(
                    "betas",
                    default="",
                    tooltip=_tooltip("betas"),
                ),
                io.Float.Input(
                    "eps",
                    default=_default("eps"),
                    min=1e-30,
                    max=1.0,
                    step=1e-8,
                    round=1e-30,
                    tooltip=_tooltip("eps"),
                ),
                io.Float.Input(
                    "momentum",
                    default=_default("momentum"),
                    min=0.0,
                    max=0.999,
                    step=0.01,
                    tooltip=_tooltip("momentum"),
                ),
                io.Float.Input(
                    "d_coef",
                    default=_default("d_coef"),
                    min=0.01,
                    max=100.0,
                    step=0.05,
                    tooltip=_tooltip("d_coef"),
                ),
                io.Boolean.Input(
                    "safeguard_warmup",
                    default=_default("safeguard_warmup"),
                    tooltip=_tooltip("safeguard_warmup"),
                ),
                io.Boolean.Input(
                    "use_bias_correction",
                    default=_default("use_bias_correction"),
                    tooltip=_tooltip("use_bias_correction"),
                ),
                io.Boolean.Input("decouple", default=_default("decouple"), tooltip=_tooltip("decouple")),
                io.Boolean.Input(
                    "relative_step", default=_default("relative_step"), tooltip=_tooltip("relative_step")
                ),
                io.Boolean.Input(
                    "scale_parameter",
                    default=_default("scale_parameter"),
                    tooltip=_tooltip("scale_parameter"),
                ),
                io.Boolean.Input(
                    "warmup_init", default=_default("warmup_init"), tooltip=_tooltip("warmup_init")
                ),
                # Appended (not by theme) so UI workflows saved before them keep their widget positions.
                io.Float.Input(
                    "lr_warmup",
                    default=default_of(SchedulerConfig, "warmup"),
                    min=0.0,
                    max=100000.0,
                    step=0.01,
                    tooltip=help_text(SchedulerConfig, "warmup"),
                ),
                io.Boolean.Input(
                    "allow_8bit_fallback",
                    default=_default("allow_8bit_fallback"),
                    tooltip=help_text(OptimizerConfig, "allow_8bit_fallback"),
                ),
                io.Float.Input(
                    "ema_decay",
                    default=default_of(TrainingConfig, "ema_decay"),
                    min=0.0,
                    max=0.99999,
                    step=0.001,
                    round=0.00001,
                    tooltip=help_text(TrainingConfig, "ema_decay"),
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, betas: str | None = None) -> bool | str:
        # Only the inputs named here skip ComfyUI's own range checks: never add **kwargs.
        if betas is None:
            return True
        try:
            OptimizerConfig(betas=parse_betas(betas))
        except ValueError as error:
            return str(error)
        return True


def optimizer_config(values: dict[str, Any], optimizer: str) -> OptimizerConfig:
    """The config of ``optimizer`` from the optimizer settings node's values (see ``for_optimizer``)."""
    settings = {name: values[name] for name in USED_BY if name != "betas"}
    chosen = OptimizerConfig(**settings, betas=parse_betas(values["betas"]))
    return for_optimizer(chosen, optimizer, values["allow_8bit_fallback"])
