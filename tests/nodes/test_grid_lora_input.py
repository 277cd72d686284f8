"""The sweep and the stack take the LoRA they test the same way: the connected LoRA, else the file
picked in lora_name; with neither, each node says in its own words what to connect."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
load_pack = pytest.importorskip("comfy_inproc", reason="the in-process ComfyUI helper is missing").load_pack

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def pack():
    load_pack()
    import lora_lab

    return lora_lab


@pytest.mark.parametrize(
    ("node_name", "message"),
    [
        ("TestLoRAStrengthSweep", "lora: connect a LoRA (from Train LoRA or Save LoRA) or pick a file in lora_name"),
        ("CompareLoRAStack", "lora: connect the new LoRA or pick it in lora_name"),
    ],
)
def test_no_lora_and_no_file_says_what_to_connect(pack, node_name, message):
    from lora_lab.nodes import NODE_CLASSES
    from lora_lab.nodes.grid_render import NO_FILE

    node = next(node for node in NODE_CLASSES if node.__name__ == node_name)
    defaults = {entry.id: getattr(entry, "default", None) for entry in node.GET_SCHEMA().inputs}
    inputs = {name: value for name, value in defaults.items() if name not in ("lora", "lora_name")}
    with pytest.raises(ValueError) as error:
        node.execute(**inputs, lora_name=NO_FILE, lora=None)
    assert str(error.value) == message


def test_a_connected_lora_wins_over_the_file_and_shows_its_output_name(pack):
    from lora_lab.nodes.grid_render import resolve_new_lora
    from lora_lab.trainer_core.adapters.export import LoRAWeights

    trained = LoRAWeights({}, {"ss_output_name": "rings_v1"})
    assert resolve_new_lora(trained, "not/read.safetensors", missing="-", unnamed="new LoRA") == (trained, "rings_v1")
    unnamed = LoRAWeights({}, {})
    lora, name = resolve_new_lora(unnamed, "not/read.safetensors", missing="-", unnamed="new LoRA")
    assert lora is unnamed and name == "new LoRA"


def test_a_picked_file_that_is_not_there_names_the_field(pack):
    from lora_lab.nodes.grid_render import resolve_new_lora

    with pytest.raises(FileNotFoundError, match="lora_name: missing.safetensors is not in models/loras"):
        resolve_new_lora(None, "missing.safetensors", missing="-", unnamed="-")
