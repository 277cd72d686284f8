"""Saving LoRA files: safe names, no clobbering, never half-written, hashes and metadata kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer_core.adapters import export
from trainer_core.adapters.export import (
    LoRAWeights,
    load_lora,
    sanitize_filename,
    save_lora,
    unique_path,
)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("my lora", "my_lora"),
        ("my_lora.safetensors", "my_lora"),
        ("people/alice v2", "people/alice_v2"),
        ('bad<>:"|?*name', "bad_______name"),
        ("CON", "_CON"),
        ("trailing dot.", "trailing_dot"),
        ("a\\b", "a/b"),
    ],
)
def test_names_are_safe_on_every_system(name, expected):
    assert sanitize_filename(name) == expected


@pytest.mark.parametrize("name", ["../escape", "a/../../b", "/etc/passwd", "C:\\x", "", "   ", "///"])
def test_names_that_leave_the_folder_or_are_empty_are_refused(name):
    with pytest.raises(ValueError) as caught:
        sanitize_filename(name)
    assert "name" in str(caught.value)


def weights() -> LoRAWeights:
    return LoRAWeights(
        {"lora_unet_x.lora_down.weight": torch.ones(2, 3), "lora_unet_x.lora_up.weight": torch.zeros(3, 2),
         "lora_unet_x.alpha": torch.tensor(2.0)},
        {"ss_trigger_word": "sks", "ss_steps": "10"},
    )


def test_save_and_load_keep_tensors_metadata_and_hash(tmp_path: Path):
    path = save_lora(weights(), tmp_path / "a.safetensors")
    loaded = load_lora(path)
    assert loaded.trigger_word == "sks" and loaded.steps == 10
    assert torch.equal(loaded["lora_unet_x.lora_down.weight"], torch.ones(2, 3))
    assert loaded.metadata["sshs_model_hash"] == weights().content_hash() == loaded.content_hash()


def test_an_existing_file_is_not_overwritten_unless_asked(tmp_path: Path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        save_lora(weights(), path)
    assert path.read_bytes() == b"precious"
    assert unique_path(tmp_path, "a") == tmp_path / "a_0001.safetensors"
    save_lora(weights(), path, overwrite=True)
    assert load_lora(path).trigger_word == "sks"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch):
    path = tmp_path / "a.safetensors"
    save_lora(weights(), path)
    before = path.read_bytes()

    def broken_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(export, "save_file", broken_save)
    with pytest.raises(OSError):
        save_lora(weights(), path, overwrite=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_peft_tensor_names_carry_the_alpha_scale_in_lora_a_and_keep_lycoris_tensors_as_they_are():
    """Files in peft's names (lora_A / lora_B, no alpha: scale 1 to ComfyUI and diffusers) change the weight
    exactly as kohya's tensors with their alpha do; LoHa tensors are left under their own names."""
    from trainer_core.adapters.export import peft_tensor_names

    generator = torch.Generator().manual_seed(0)
    down, up = torch.randn(4, 6, generator=generator), torch.randn(5, 4, generator=generator)
    kohya = {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(2.0)}
    peft = peft_tensor_names(kohya)
    assert set(peft) == {"lora_A.weight", "lora_B.weight"}
    torch.testing.assert_close(peft["lora_B.weight"] @ peft["lora_A.weight"], (2.0 / 4) * (up @ down))
    loha = {"hada_w1_a": down, "hada_w1_b": up, "alpha": torch.tensor(2.0)}
    assert peft_tensor_names(loha).keys() == loha.keys()


def test_a_lora_layer_split_by_rows_changes_each_part_exactly_as_the_whole_did():
    """A fused qkv LoRA (down [r, in], up [3 x out, r]) saved as q, k and v: each part has the same down
    weights and alpha and its rows of the up weights, so together they change the weight exactly as the
    fused layer did; rows may also come in another order (a swapped pair of halves). LoHa: no split."""
    from trainer_core.adapters.export import split_rows

    generator = torch.Generator().manual_seed(0)
    down, up = torch.randn(4, 6, generator=generator), torch.randn(9, 4, generator=generator)
    kohya = {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(2.0)}
    parts = split_rows(kohya, [("q", range(0, 3)), ("k", range(3, 6)), ("v", range(6, 9))])
    assert [stem for stem, _ in parts] == ["q", "k", "v"]
    rebuilt = torch.cat([part["lora_up.weight"] @ part["lora_down.weight"] for _, part in parts])
    assert torch.equal(rebuilt, up @ down)
    assert all(torch.equal(part["lora_down.weight"], down) and part["alpha"] == 2.0 for _, part in parts)
    ((_, swapped),) = split_rows(kohya, [("norm", [5, 6, 7, 8, 0, 1, 2, 3, 4])])
    assert torch.equal(swapped["lora_up.weight"], torch.cat([up[5:], up[:5]]))
    assert split_rows({"hada_w1_a": down, "hada_w1_b": up, "alpha": torch.tensor(2.0)}, [("q", range(3))]) is None
