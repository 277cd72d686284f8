"""Writing the sweep's recommendation into a saved LoRA file: atomically, weights untouched, never over a
file that holds other weights (trainer_core.adapters.export.rewrite_metadata)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from trainer_core.adapters import export
from trainer_core.adapters.export import LoRAWeights, rewrite_metadata, save_lora

KEYS = {"lora_lab_recommended_strength": "0.7"}


@pytest.fixture
def saved(tmp_path):
    weights = LoRAWeights({"lora_unet_a.lora_down.weight": torch.randn(4, 8), "lora_unet_a.lora_up.weight": torch.randn(8, 4),
                           "lora_unet_a.alpha": torch.tensor(4.0)}, {"ss_trigger_word": "sks"})
    return weights, save_lora(weights, tmp_path / "my_lora.safetensors")


def metadata(path):
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def test_the_key_is_added_and_everything_else_kept(saved):
    weights, path = saved
    before = metadata(path)
    rewrite_metadata(path, weights, KEYS)
    assert metadata(path) == {**before, **KEYS}
    reloaded = load_file(str(path))
    assert reloaded.keys() == weights.keys() and all(torch.equal(reloaded[k], weights[k]) for k in weights)


def test_a_failed_write_leaves_the_file_as_it_was(saved, monkeypatch):
    weights, path = saved
    before = path.read_bytes()

    def half_write(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\x00" * 10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "save_file", half_write)
    monkeypatch.setattr(export, "disk_full_message", lambda path, needed: "disk full")
    with pytest.raises(OSError, match="disk full"):
        rewrite_metadata(path, weights, KEYS)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name], "a temporary file was left behind"


def test_a_file_replaced_since_it_was_saved_is_not_touched(saved):
    weights, path = saved
    other = LoRAWeights({k: v + 1 for k, v in weights.items()})
    before = path.read_bytes()
    with pytest.raises(ValueError, match="other weights"):
        rewrite_metadata(path, other, KEYS)
    assert path.read_bytes() == before
