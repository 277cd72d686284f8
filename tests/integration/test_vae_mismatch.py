"""Another family's VAE on the MODEL is refused with a message naming the VAE, the model and the fix, before
anything is encoded, trained, sampled or decoded; never a stack trace from inside ComfyUI.

Real ComfyUI objects in this process: ComfyUI's own model classes (tiny), VAEs as ComfyUI detects them from
a state dict (``family_models.family_vae``), Train LoRA's and the grid nodes' own code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from comfy_inproc import load_pack  # noqa: E402
from family_models import FakeClip, family_patcher, family_vae  # noqa: E402

pytestmark = pytest.mark.comfy

MISMATCHES = [
    # (model family, VAE family, what the message says of each)
    ("flux", "sd15", "an SD1.5 / SDXL VAE: 4-channel image latents", "ComfyUI's Flux, which works on 16-channel image"),
    ("sd15", "flux", "an SD3 / Flux.1 VAE: 16-channel image latents", "ComfyUI's BaseModel, which works on 4-channel"),
    ("flux2", "flux", "an SD3 / Flux.1 VAE: 16-channel image latents", "ComfyUI's Flux2, which works on 128-channel"),
]
FIX = "Connect this model's own VAE: the VAE output of the checkpoint loader that gives the MODEL"


@pytest.fixture(scope="module")
def nodes():
    load_pack()
    from lora_lab.nodes import grid_render, sampler, train_lora

    return train_lora, grid_render, sampler


@pytest.mark.parametrize(("model_family", "vae_family", "vae_words", "model_words"), MISMATCHES)
def test_train_lora_refuses_another_familys_vae_before_anything_runs(nodes, model_family, vae_family, vae_words,
                                                                     model_words, monkeypatch):
    import comfy.model_management

    train_lora, _, _ = nodes
    patcher, vae = family_patcher(model_family), family_vae(vae_family)
    monkeypatch.setattr(patcher, "clone", lambda: pytest.fail("Train LoRA cloned the MODEL before refusing the VAE"))
    monkeypatch.setattr(vae, "encode", lambda *a: pytest.fail("Train LoRA encoded with a VAE that does not fit"))
    loaded_before = list(comfy.model_management.current_loaded_models)
    inputs = dict.fromkeys(("clip", "dataset", "preset", "trigger_word", "adapter_type", "rank", "alpha",
                            "learning_rate", "optimizer", "lr_scheduler", "steps", "epochs", "batch_size", "seed",
                            "run_name"))
    with pytest.raises(ValueError) as refused:
        train_lora.TrainLoRA.execute(model=patcher, vae=vae, **inputs)
    message = str(refused.value)
    assert message.startswith("TrainLoRA: vae: the VAE (")
    assert vae_words in message and model_words in message and FIX in message
    assert comfy.model_management.current_loaded_models == loaded_before


@pytest.mark.parametrize(("model_family", "vae_family", "vae_words", "model_words"), MISMATCHES)
def test_sweep_and_stack_cells_refuse_another_familys_vae_before_sampling(nodes, model_family, vae_family, vae_words,
                                                                          model_words, monkeypatch):
    _, grid_render, sampler = nodes
    monkeypatch.setattr(sampler, "ksample", lambda *a, **k: pytest.fail("sampled with a VAE that does not fit"))
    sampling = grid_render.Sampling("", 0, 2, 1.0, "euler", "simple", 64, 64)
    with pytest.raises(ValueError) as refused:
        grid_render.render_cells(family_patcher(model_family), FakeClip(model_family), family_vae(vae_family), {},
                                 [[grid_render.Cell((), "a red square")]], sampling, {})
    message = str(refused.value)
    assert message.startswith("vae: the VAE (") and vae_words in message and model_words in message and FIX in message


def test_a_vae_of_the_same_latent_kind_is_accepted_and_renders(nodes):
    """SD3 and Flux.1 share their latent (16 channels, 8x): Flux's VAE decodes an SD3 model's cells."""
    _, grid_render, _ = nodes
    sampling = grid_render.Sampling("", 0, 2, 1.0, "euler", "simple", 64, 48)
    with torch.inference_mode():
        rows = grid_render.render_cells(family_patcher("sd3"), FakeClip("sd3"), family_vae("flux"), {},
                                        [[grid_render.Cell((), "a red square")]], sampling, {})
    assert rows[0][0].shape == (48, 64, 3)


def test_on_a_family_the_tests_do_not_cover_a_mismatch_is_a_warning_not_a_refusal(nodes, capsys):
    """An untested family's VAE may legitimately differ from its latent format: say it, do not refuse."""
    load_pack()
    from lora_lab.nodes import bridge

    patcher = family_patcher("flux")

    class BrandNewFlux(type(patcher.model)):  # a family LoRA Lab's tests have never trained
        pass

    patcher.model.__class__ = BrandNewFlux
    bridge.check_vae_fits(family_vae("sd15"), patcher, "vae")
    out = capsys.readouterr().out
    assert out.startswith("[LoRA Lab] Warning: vae: the VAE (an SD1.5 / SDXL VAE") and "BrandNewFlux" in out
