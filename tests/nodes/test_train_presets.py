"""TrainLoRA's presets name only fields of Train LoRA or of the settings node that hosts them, with values
their widgets accept, so filling the fields from a preset in the canvas never gives a node that fails
validation; /lora_lab/presets says which settings node hosts each field."""

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
    from lora_lab.nodes.train_lora import SETTINGS_NODES
    from lora_lab.nodes.train_settings import settings_hosts
    from lora_lab.trainer_core.training.presets import NOT_TRAINLORA_FIELDS, PRESET_CHOICES, PRESETS

    inputs = _inputs("TrainLoRA")
    assert list(inputs["preset"].options) == list(PRESET_CHOICES)
    dataset_inputs = _inputs("LoadDataset")
    hosts = settings_hosts(SETTINGS_NODES)
    for name, preset in PRESETS.items():
        for field, value in preset["values"].items():
            if field in NOT_TRAINLORA_FIELDS:
                assert _acceptable(dataset_inputs["resolution"], value), (name, field, value)
                continue
            if field in inputs:
                entry = inputs[field]
            else:
                assert field in hosts, f"preset {name!r} sets {field}, which neither TrainLoRA nor a settings node has"
                host = hosts[field]
                assert host["socket"] in inputs, f"{host['node']} is not wired into TrainLoRA's {host['socket']}"
                (node,) = [n for n in SETTINGS_NODES if n.GET_SCHEMA().node_id == host["node"]]
                entry = {e.id: e for e in node.GET_SCHEMA().inputs}[field]
            assert _acceptable(entry, value), f"preset {name!r}: {field}={value!r} is out of range"


def test_settings_hosts_name_each_moved_field_once_with_its_node_default():
    load_pack()
    from lora_lab.nodes.train_lora import SETTINGS_NODES
    from lora_lab.nodes.train_settings import settings_hosts

    hosts = settings_hosts(SETTINGS_NODES)
    train_inputs = _inputs("TrainLoRA")
    assert not set(hosts) & set(train_inputs), "a field is both on TrainLoRA and on a settings node"
    assert hosts["gradient_checkpointing"] == {
        "node": "LoraLabMemorySettings", "socket": "memory_settings", "default": False,
    }
    assert hosts["noise_offset"]["node"] == "LoraLabLossSettings"
    assert hosts["lr_warmup"]["socket"] == "optimizer_settings"


def test_family_presets_name_the_model_classes_the_matrix_families_load_as():
    """Each family preset's model classes are ComfyUI's own (comfy.model_base), and every family of the matrix
    has a family preset except the ones the README lists (they get 'quick test (any model)')."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
    load_pack()
    import comfy.model_base
    from comfy_inproc import tiny_model_patcher
    from lora_lab.trainer_core.training.presets import PRESETS
    from tiny_families import FAMILIES

    covered = {cls for preset in PRESETS.values() for cls in preset["model_classes"]}
    for cls in covered:
        assert isinstance(getattr(comfy.model_base, cls, None), type), f"{cls} is not a ComfyUI model class"
    matrix = {name: type(tiny_model_patcher(name).model).__name__ for name in FAMILIES}
    without = sorted(name for name, cls in matrix.items() if cls not in covered)
    assert without == ["auraflow", "cosmos_predict2", "hunyuan_dit", "hunyuan_image21", "hunyuan_video", "pixart_sigma"]
