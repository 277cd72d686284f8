"""LoRA Lab Optimizer Settings: the optimizer's finer settings, for Train LoRA's optimizer_settings input."""

from __future__ import annotations

from comfy_api.latest import io

from ..trainer_core.fields import default_of, help_text
from ..trainer_core.training.optimizer_settings import parse_betas, used_by_text
from ..trainer_core.training.optimizers import OptimizerConfig
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


class LoRALabOptimizerSettings(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoraLabOptimizerSettings",
            display_name="LoRA Lab Optimizer Settings",
            category="LoRA Lab/Training",
            description=(
                "The optimizer's finer settings, for Train LoRA's optimizer_settings input. Train LoRA's "
                "optimizer input still picks the optimizer; settings it does not use are ignored (each "
                "tooltip says which optimizers use it). Defaults are the guides' values."
            ),
            inputs=[
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
            ],
            outputs=[
                OptimizerSettings.Output(
                    "optimizer_settings",
                    display_name="optimizer_settings",
                    tooltip="Connect to Train LoRA's optimizer_settings input.",
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

    @classmethod
    def execute(
        cls,
        weight_decay: float,
        betas: str,
        eps: float,
        momentum: float,
        d_coef: float,
        safeguard_warmup: bool,
        use_bias_correction: bool,
        decouple: bool,
        relative_step: bool,
        scale_parameter: bool,
        warmup_init: bool,
    ) -> io.NodeOutput:
        settings = OptimizerConfig(
            weight_decay=weight_decay,
            betas=parse_betas(betas),
            eps=eps,
            momentum=momentum,
            d_coef=d_coef,
            safeguard_warmup=safeguard_warmup,
            use_bias_correction=use_bias_correction,
            decouple=decouple,
            relative_step=relative_step,
            scale_parameter=scale_parameter,
            warmup_init=warmup_init,
        )
        return io.NodeOutput(settings)
