"""Train LoRA's advanced settings, on small nodes wired into it: loss, memory, adapter, samples and
checkpoints, text encoder (and the optimizer's, in optimizer_settings.py).

Train LoRA shows the settings the guides teach; the rest live here, grouped as the guides group them.
Each settings node declares its inputs once (name, range, default, tooltip: the defaults and tooltips
read from the core's config dataclasses) and gives Train LoRA a ``NodeSettings``: its widget values by
name. A settings input left unconnected on Train LoRA means that node's declared defaults, so a graph
without settings nodes trains exactly as Train LoRA did when every setting sat on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy_api.latest import io

from ..trainer_core.adapters.config import BLOCK_WEIGHT_FIELDS, LoRAConfig
from ..trainer_core.fields import default_of, help_text
from ..trainer_core.training.config import MIXED_PRECISION_CHOICES, TrainingConfig
from ..trainer_core.training.losses import LOSS_TYPES, TIMESTEP_SAMPLING
from ..trainer_core.training.memory import BASE_WEIGHT_CHOICES, BASE_WEIGHTS_HELP
from ..trainer_core.training.validation import ValidationConfig
from . import bridge
from .encoding_cache import ENCODING_CACHE_HELP
from .types import (
    AdapterSettings,
    LossSettings,
    MemorySettings,
    SampleSettings,
    TextEncoderSettings,
)

LORA_DROPOUT_MAX = 0.9
BLOCK_WEIGHT_MAX = 10.0
CATEGORY = "LoRA Lab/Training"


@dataclass(frozen=True)
class NodeSettings:
    """What a settings node gives Train LoRA: its widget values, by input name."""

    values: tuple[tuple[str, Any], ...]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)


class SettingsNode(io.ComfyNode):
    """A node whose only job is to hand its widget values to one of Train LoRA's settings inputs.

    Subclasses set ``SOCKET`` (Train LoRA's input), ``SOCKET_TYPE`` and declare their inputs with
    ``settings_schema``; ``execute`` is shared.
    """

    SOCKET = ""
    SOCKET_TYPE: Any = None

    @classmethod
    def execute(cls, **values: Any) -> io.NodeOutput:
        # An optional input an older graph does not give means its declared default.
        values = {**declared_defaults(cls), **values}
        return io.NodeOutput(NodeSettings(tuple(sorted(values.items()))))


def settings_schema(
    node: type[SettingsNode], node_id: str, display_name: str, description: str, inputs: list
) -> io.Schema:
    """The schema of a settings node: its inputs and one output for Train LoRA's ``node.SOCKET``."""
    return io.Schema(
        node_id=node_id,
        display_name=display_name,
        category=CATEGORY,
        description=f"{description} Connect it to Train LoRA's {node.SOCKET} input; not connected = these "
        "defaults, the guides' values.",
        inputs=inputs,
        outputs=[
            node.SOCKET_TYPE.Output(
                node.SOCKET, display_name=node.SOCKET, tooltip=f"Connect to Train LoRA's {node.SOCKET} input."
            )
        ],
    )


def _train_help(name: str) -> str:
    return help_text(TrainingConfig, name)


def _lora_help(name: str) -> str:
    return help_text(LoRAConfig, name)


class LoRALabLossSettings(SettingsNode):
    SOCKET = "loss_settings"
    SOCKET_TYPE = LossSettings

    @classmethod
    def define_schema(cls) -> io.Schema:
        return settings_schema(cls, "LoraLabLossSettings", "LoRA Lab Loss Settings",
                               "How the loss weighs noise levels, and the noise training adds.", [
            io.Float.Input("min_snr_gamma", default=default_of(TrainingConfig, "min_snr_gamma"), min=0.0, max=100.0,
                           step=0.5, tooltip=_train_help("min_snr_gamma")),
            io.Float.Input("noise_offset", default=0.0, min=0.0, max=1.0, step=0.01, tooltip=_train_help("noise_offset")),
            io.Combo.Input("loss_type", options=list(LOSS_TYPES), default="mse", tooltip=_train_help("loss_type")),
            io.Combo.Input("timestep_sampling", options=list(TIMESTEP_SAMPLING), default="uniform",
                           tooltip=_train_help("timestep_sampling")),
            io.Int.Input("multires_noise_iterations", default=0, min=0, max=16,
                         tooltip=_train_help("multires_noise_iterations")),
            # Optional, so API graphs saved before them still validate (execute fills in their defaults).
            io.Boolean.Input("masked_loss", default=default_of(TrainingConfig, "masked_loss"), optional=True,
                             tooltip=_train_help("masked_loss")),
            io.Float.Input("prior_loss_weight", default=default_of(TrainingConfig, "prior_loss_weight"), min=0.0,
                           max=100.0, step=0.05, optional=True, tooltip=_train_help("prior_loss_weight")),
        ])


class LoRALabMemorySettings(SettingsNode):
    SOCKET = "memory_settings"
    SOCKET_TYPE = MemorySettings

    @classmethod
    def define_schema(cls) -> io.Schema:
        return settings_schema(cls, "LoraLabMemorySettings", "LoRA Lab Memory Settings",
                               "Precision and the ways to train in less GPU memory.", [
            io.Combo.Input("mixed_precision", options=list(MIXED_PRECISION_CHOICES), default="auto",
                           tooltip=_train_help("mixed_precision")),
            io.Boolean.Input("gradient_checkpointing", default=False, tooltip=_train_help("gradient_checkpointing")),
            io.Int.Input("gradient_accumulation", default=1, min=1, max=256,
                         tooltip=_train_help("gradient_accumulation")),
            io.Boolean.Input("optimizer_state_on_cpu", default=False, tooltip=_train_help("optimizer_state_on_cpu")),
            io.Combo.Input("base_weights", options=list(BASE_WEIGHT_CHOICES), default="as loaded",
                           tooltip=BASE_WEIGHTS_HELP),
            io.Boolean.Input(
                "unload_other_models", default=True,
                tooltip="Unload every other model from the GPU before training: more memory for training, "
                "the next sampler reloads what it needs.",
            ),
            # Optional, so API graphs saved before it still validate (execute fills in its default).
            io.Boolean.Input("encoding_cache", default=True, optional=True, tooltip=ENCODING_CACHE_HELP),
        ])

    @classmethod
    def validate_inputs(cls, base_weights: str | None = None) -> bool | str:
        # Only the inputs named here skip ComfyUI's own range checks: never add **kwargs.
        return bridge.base_weights_problem(base_weights) or True


class LoRALabAdapterSettings(SettingsNode):
    SOCKET = "adapter_settings"
    SOCKET_TYPE = AdapterSettings

    @classmethod
    def define_schema(cls) -> io.Schema:
        return settings_schema(cls, "LoraLabAdapterSettings", "LoRA Lab Adapter Settings",
                               "Which layers get the adapter (with LoCon's convolutions), its dropout, its scaling and the "
                               "learning-rate weight of each block group.", [
            io.Combo.Input("target_layers", options=["attention", "all_linear"], default="attention",
                           tooltip=_lora_help("target")),
            io.Float.Input("lora_dropout", default=0.0, min=0.0, max=LORA_DROPOUT_MAX, step=0.05,
                           tooltip=_lora_help("dropout")),
            io.Boolean.Input("rslora", default=False, tooltip=_lora_help("rslora")),
            # Optional, so API graphs saved before them still validate (execute fills in their defaults).
            io.Int.Input("conv_rank", default=default_of(LoRAConfig, "conv_rank"), min=0, max=1024, optional=True,
                         tooltip=_lora_help("conv_rank")),
            io.Float.Input("conv_alpha", default=default_of(LoRAConfig, "conv_alpha"), min=0.01, max=1024, step=0.5,
                           optional=True, tooltip=_lora_help("conv_alpha")),
            *[io.Float.Input(name, default=default_of(LoRAConfig, name), min=0.0, max=BLOCK_WEIGHT_MAX, step=0.05,
                             optional=True, tooltip=_lora_help(name)) for name in BLOCK_WEIGHT_FIELDS],
        ])

    @classmethod
    def validate_inputs(
        cls, lora_dropout: float | None = None, input_blocks_lr_weight: float | None = None,
        middle_block_lr_weight: float | None = None, output_blocks_lr_weight: float | None = None,
        double_blocks_lr_weight: float | None = None, single_blocks_lr_weight: float | None = None,
    ) -> bool | str:
        # Only the inputs named here skip ComfyUI's own range checks: never add **kwargs.
        if lora_dropout is not None and not 0 <= lora_dropout <= LORA_DROPOUT_MAX:
            return f"lora_dropout must be from 0 to {LORA_DROPOUT_MAX}, got {lora_dropout}"
        weights = {"input_blocks_lr_weight": input_blocks_lr_weight, "middle_block_lr_weight": middle_block_lr_weight,
                   "output_blocks_lr_weight": output_blocks_lr_weight,
                   "double_blocks_lr_weight": double_blocks_lr_weight,
                   "single_blocks_lr_weight": single_blocks_lr_weight}
        for name, value in weights.items():
            if value is not None and not 0 <= value <= BLOCK_WEIGHT_MAX:
                return f"{name} must be from 0 to {BLOCK_WEIGHT_MAX}, got {value}"
        # A weight not given (an older graph) or linked means its default, 1: only all five at 0 is refused.
        if all(value == 0 for value in weights.values()):
            return ("every block learning-rate weight is 0, so nothing would train: set at least one of "
                    f"{', '.join(weights)} above 0 (1 = the full learning rate)")
        return True


class LoRALabSampleSettings(SettingsNode):
    SOCKET = "sample_settings"
    SOCKET_TYPE = SampleSettings

    @classmethod
    def define_schema(cls) -> io.Schema:
        return settings_schema(cls, "LoraLabSampleSettings", "LoRA Lab Samples and Checkpoints",
                               "Sample images while training, checkpoints, resuming a run, and validation on "
                               "held-out images.", [
            io.Int.Input("sample_every", default=0, min=0, max=100000,
                         tooltip="Every N steps (and at the end), draw the sample prompts with the LoRA as it is "
                         "then, through ComfyUI's own sampler; shown on the node and returned as 'samples'. 0 = off."),
            io.String.Input("sample_prompts", multiline=True, default="{trigger}",
                            tooltip="Prompts for the sample images, one per line; {trigger} becomes the trigger word."),
            io.Int.Input("sample_steps", default=20, min=1, max=200, tooltip="Sampling steps of the sample images."),
            io.Float.Input("sample_cfg", default=7.0, min=0.0, max=30.0, step=0.1,
                           tooltip="CFG of the sample images (about 7 for SD1.5/SDXL, 1 for Flux)."),
            io.Int.Input("save_every", default=0, min=0, max=100000,
                         tooltip="Save a checkpoint every N steps (0 = only when you press Cancel). With validation on, "
                         "the last step is saved as a checkpoint too."),
            io.Int.Input("keep_last", default=0, min=0, max=1000,
                         tooltip="Keep only the last N step checkpoints of this run (0 = keep all). With validation on, "
                         "the best one so far is kept too."),
            io.Boolean.Input(
                "resume", default=False,
                tooltip="Continue the run named run_name from its last checkpoint: LoRA weights, optimizer, "
                "random state and step counter. Set steps to the new total.",
            ),
            # Optional, so API graphs saved before them still validate (execute fills in their defaults).
            io.Float.Input("validation_share", default=default_of(ValidationConfig, "share"), min=0.0, max=0.9,
                           step=0.01, optional=True, tooltip=help_text(ValidationConfig, "share")),
            io.Int.Input("validate_every", default=default_of(ValidationConfig, "every"), min=0, max=100000,
                         optional=True, tooltip=help_text(ValidationConfig, "every")),
        ])


class LoRALabTextEncoderSettings(SettingsNode):
    SOCKET = "text_encoder_settings"
    SOCKET_TYPE = TextEncoderSettings

    @classmethod
    def define_schema(cls) -> io.Schema:
        return settings_schema(cls, "LoraLabTextEncoderSettings", "LoRA Lab Text Encoder Settings",
                               "Training a LoRA in the text encoder too, and clip skip.", [
            io.Float.Input("text_encoder_lr", default=default_of(TrainingConfig, "text_encoder_lr"), min=0.0,
                           max=10.0, step=1e-5, round=1e-7, tooltip=_train_help("text_encoder_lr")),
            io.Int.Input("clip_skip", default=default_of(TrainingConfig, "clip_skip"), min=1, max=12,
                         tooltip=_train_help("clip_skip")),
            # Optional, so API graphs saved before it still validate (execute fills in its default).
            io.Boolean.Input("train_t5", default=default_of(TrainingConfig, "train_t5"), optional=True,
                             tooltip=_train_help("train_t5")),
        ])


def declared_defaults(node: type[io.ComfyNode]) -> dict[str, Any]:
    """A settings node's inputs with their declared defaults: what an unconnected settings input means."""
    # define_schema, not GET_SCHEMA: ComfyUI runs a locked copy of the class, on which GET_SCHEMA may not cache.
    return {entry.id: entry.default for entry in node.define_schema().inputs}


def merged_settings(nodes: list[type[SettingsNode]], connected: dict[str, NodeSettings | None]) -> dict[str, Any]:
    """Every settings node's values by input name: the connected node's, else that node's defaults."""
    values: dict[str, Any] = {}
    for node in nodes:
        given = connected.get(node.SOCKET)
        values.update(declared_defaults(node) if given is None else given.as_dict())
    return values


def moved_inputs_message(nodes: list[type[SettingsNode]], given: dict[str, Any]) -> str | None:
    """For an API graph written before the settings nodes: which of ``given`` (Train LoRA's inputs in the
    prompt) now live on a settings node, and how to move them there; None when there are none."""
    parts = []
    for node in nodes:
        moved = [name for name in declared_defaults(node) if name in given]
        if not moved:
            continue
        schema = node.GET_SCHEMA()
        names = ", ".join(f"'{name}'" for name in moved)
        these = moved[0] if len(moved) == 1 else "them"
        parts.append(
            f"{names} moved to the {schema.display_name} node: add that node, set {these} there and connect it "
            f"to Train LoRA's {node.SOCKET} input."
        )
    return f"TrainLoRA: {' '.join(parts)}" if parts else None


def settings_hosts(nodes: list[type[SettingsNode]]) -> dict[str, dict[str, Any]]:
    """Input name -> the settings node that hosts it: {node (id), socket (Train LoRA's input), default}."""
    return {
        name: {"node": node.GET_SCHEMA().node_id, "socket": node.SOCKET, "default": default}
        for node in nodes
        for name, default in declared_defaults(node).items()
    }
