"""TrainLoRA's presets name only its own fields, with values its widgets accept, so filling the
fields from a preset in the canvas never gives a node that fails validation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from comfy_inproc import load_pack  # noqa: E402

pytestmark = pytest.mark.comfy


def _inputs(node_name: str) -> dict:
    load_pack()
    from lora_lab.nodes import NODE_CLASSES

    (node,) = [n for n in NODE_CLASSES if n.__name__ == node_name]
    return {entry.id: entry for entry in node.GET_SCHEMA().inputs}


def _acceptable(entry, value) -> bool:
    options = getattr(entry, "options", None)
    if options:
        return value in options
    if isinstance(value, bool):
        return str(entry.get_io_type()) == "BOOLEAN"
    low, high = getattr(entry, "min", None), getattr(entry, "max", None)
    return (low is None or value >= low) and (high is None or value <= high)


def test_every_preset_value_is_a_valid_widget_value():
    load_pack()
    from lora_lab.trainer_core.training.presets import NOT_TRAINLORA_FIELDS, PRESET_CHOICES, PRESETS

    inputs = _inputs("TrainLoRA")
    assert list(inputs["preset"].options) == list(PRESET_CHOICES)
    dataset_inputs = _inputs("LoadDataset")
    for name, preset in PRESETS.items():
        for field, value in preset["values"].items():
            if field in NOT_TRAINLORA_FIELDS:
                assert _acceptable(dataset_inputs["resolution"], value), (name, field, value)
                continue
            assert field in inputs, f"preset {name!r} sets {field}, which TrainLoRA does not have"
            assert _acceptable(inputs[field], value), f"preset {name!r}: {field}={value!r} is out of range"
