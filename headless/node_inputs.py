"""What a node definition from ``/object_info`` says about its inputs, by the frontend's widget rules.

The rules are the frontend's (1.27-1.32): one value per widget input in ``input_order`` (required,
then optional); an INT with ``control_after_generate`` (or named ``seed``/``noise_seed`` unless that
flag is explicitly false) is followed by a control value ("fixed", "increment", "decrement",
"randomize"), a COMBO with the flag by a control and a filter value. Control values are saved in the
UI file, never sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
# Flags that add widgets or values these rules do not model (upload buttons, remote lists).
UNSUPPORTED_FLAGS = ("image_upload", "video_upload", "file_upload", "audio_upload", "remote")
OPTIONAL_SOCKET_SHAPE = 7  # the frontend draws optional inputs as hollow dots


class WorkflowFormatError(ValueError):
    """A workflow does not fit the node definitions it is converted with."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str  # "COMBO" for both V1 (list) and V3 combos
    options: dict[str, Any]
    optional: bool
    choices: tuple[Any, ...] | None  # a combo's values

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.options.get("forceInput", False)

    @property
    def control_values(self) -> int:
        """How many saved-only values follow this widget's own value (0, 1 or 2)."""
        flag = self.options.get("control_after_generate")
        if self.type == "INT" and (flag or (flag is None and self.name in ("seed", "noise_seed"))):
            return 1
        if self.type == "COMBO" and flag:
            return 2
        return 0

    @property
    def is_multiline(self) -> bool:
        return self.type == "STRING" and bool(self.options.get("multiline"))


def input_specs(node_info: dict[str, Any]) -> list[InputSpec]:
    """A node's inputs in the frontend's order (``input_order``: required, then optional)."""
    specs = []
    order = node_info.get("input_order") or {
        section: list(node_info["input"].get(section, {})) for section in ("required", "optional")
    }
    for section in ("required", "optional"):
        for name in order.get(section, []):
            raw = node_info["input"][section][name]
            kind, options = raw[0], (raw[1] if len(raw) > 1 and isinstance(raw[1], dict) else {})
            if isinstance(kind, list):
                specs.append(InputSpec(name, "COMBO", options, section == "optional", tuple(kind)))
            elif kind == "COMBO":
                specs.append(
                    InputSpec(
                        name, "COMBO", options, section == "optional", tuple(options.get("options", ()))
                    )
                )
            else:
                specs.append(InputSpec(name, kind, options, section == "optional", None))
            unsupported = [flag for flag in UNSUPPORTED_FLAGS if options.get(flag)]
            if unsupported:
                raise WorkflowFormatError(
                    f"{node_info.get('name')}.{name}: inputs with {unsupported} add widgets these rules do not model"
                )
    return specs


def widget_specs(node_info: dict[str, Any]) -> list[InputSpec]:
    return [spec for spec in input_specs(node_info) if spec.is_widget]


def default_inputs(node_info: dict[str, Any]) -> dict[str, Any]:
    """Every widget input that has a default, with that default."""
    return {
        spec.name: spec.options["default"] for spec in widget_specs(node_info) if "default" in spec.options
    }


def display_name(node_info: dict[str, Any]) -> str:
    return node_info.get("display_name") or node_info["name"]


def is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    )


def node_info(object_info: dict[str, Any], class_type: str, node_id: Any) -> dict[str, Any]:
    if class_type not in object_info:
        raise WorkflowFormatError(f"node {node_id}: type {class_type!r} is not registered in this ComfyUI")
    return object_info[class_type]
