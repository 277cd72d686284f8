"""Every node's schema passes ComfyUI's own registration checks (a failing one hides the whole pack)."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from comfy_inproc import load_pack  # noqa: E402

pytestmark = pytest.mark.comfy


def node_classes():
    load_pack()
    from lora_lab.nodes import NODE_CLASSES

    return NODE_CLASSES


@pytest.mark.parametrize("node", node_classes(), ids=lambda node: node.__name__)
def test_schema_registers_like_comfyui_registers_it(node):
    schema = node.GET_SCHEMA()  # runs Schema.validate() and finalize(), as ComfyUI's loader does
    assert schema.node_id and schema.display_name and schema.category.startswith("LoRA Lab/")
    for entry in schema.inputs:
        assert entry.tooltip, f"{schema.node_id}.{entry.id} has no tooltip"


@pytest.mark.parametrize("node", node_classes(), ids=lambda node: node.__name__)
def test_validate_inputs_names_its_inputs_and_takes_no_catch_all(node):
    # An input named by validate_inputs skips ComfyUI's range checks; **kwargs would skip them all.
    if "validate_inputs" not in vars(node):
        return
    parameters = inspect.signature(node.validate_inputs).parameters.values()
    assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in parameters), node.__name__
