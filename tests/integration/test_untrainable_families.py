"""Families Train LoRA cannot train are refused before anything runs, naming ComfyUI's model class; a
family LoRA Lab's tests do not cover trains through the generic path with a note in the console.

Stable Cascade's stages, Stable Audio and Hunyuan3D are ComfyUI's own model classes built from tiny
configs in this process; ACE-Step and the x4 upscaler (which need torchaudio or a full UNet) are checked
on their classes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from comfy_inproc import load_pack  # noqa: E402
from family_models import family_patcher  # noqa: E402

pytestmark = pytest.mark.comfy

UNTRAINABLE = {  # supported_models class, tiny config, what the refusal calls it
    "StableCascade_C": ("Stable_Cascade_C", dict(
        c_hidden=[32, 32], nhead=[2, 2], blocks=[[1, 1], [1, 1]], block_repeat=[[1, 1], [1, 1]], c_cond=32,
        c_clip_text=32, c_clip_text_pooled=32, c_clip_img=32, c_r=16), "a Stable Cascade stage"),
    "StableCascade_B": ("Stable_Cascade_B", dict(
        c_hidden=[32, 32, 32, 32], nhead=[-1, -1, 2, 2], blocks=[[1, 1, 1, 1], [1, 1, 1, 1]],
        block_repeat=[[1, 1, 1, 1], [1, 1, 1, 1]], c_cond=32, c_r=16, level_config=["CT", "CT", "CTA", "CTA"],
        c_clip=32), "a Stable Cascade stage"),
    "StableAudio1": ("StableAudio", dict(
        audio_model="dit1.0", embed_dim=64, depth=1, num_heads=2, cond_token_dim=32, global_cond_dim=64),
        "an audio model"),
    "Hunyuan3Dv2": ("Hunyuan3Dv2", dict(
        image_model="hunyuan3d2", in_channels=64, context_in_dim=32, hidden_size=64, num_heads=2, depth=1,
        depth_single_blocks=1), "a 3D model"),
}


def untrainable_patcher(model_class_name: str):
    import comfy.ldm.audio.embedders
    import comfy.model_patcher
    import comfy.supported_models

    config_class_name, tiny, _ = UNTRAINABLE[model_class_name]
    config_class = getattr(comfy.supported_models, config_class_name)
    config = dict(config_class.unet_config)
    config.update(tiny)
    model_config = config_class(config)
    model_config.set_inference_dtype(torch.float32, None)
    state_dict = {}
    if model_class_name == "StableAudio1":  # its seconds embedders load from the checkpoint
        embedder = comfy.ldm.audio.embedders.NumberConditioner(768, min_val=0, max_val=512).state_dict()
        for name in ("seconds_start", "seconds_total"):
            state_dict.update({f"conditioner.conditioners.{name}.{k}": v for k, v in embedder.items()})
    with torch.inference_mode():
        model = model_config.get_model(state_dict)
    assert type(model).__name__ == model_class_name
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


@pytest.fixture(scope="module")
def pack():
    load_pack()
    from lora_lab.nodes import bridge, families, train_lora

    return bridge, families, train_lora


@pytest.mark.parametrize("model_class_name", list(UNTRAINABLE))
def test_train_lora_refuses_before_anything_runs_and_names_the_model_type(pack, model_class_name, monkeypatch):
    import comfy.model_management

    bridge, _, train_lora = pack
    patcher = untrainable_patcher(model_class_name)
    monkeypatch.setattr(patcher, "clone", lambda: pytest.fail("Train LoRA cloned a MODEL it cannot train"))
    loaded_before = list(comfy.model_management.current_loaded_models)
    inputs = dict.fromkeys(("clip", "vae", "dataset", "preset", "trigger_word", "adapter_type", "rank", "alpha",
                            "learning_rate", "optimizer", "lr_scheduler", "steps", "epochs", "batch_size", "seed",
                            "run_name"))
    with pytest.raises(bridge.UnsupportedModelError) as refused:
        train_lora.TrainLoRA.execute(model=patcher, **inputs)
    message = str(refused.value)
    assert message.startswith("TrainLoRA: ")
    assert f"ComfyUI's {model_class_name}" in message and UNTRAINABLE[model_class_name][2] in message
    assert "connect an image model's MODEL" in message
    assert comfy.model_management.current_loaded_models == loaded_before


@pytest.mark.parametrize("model_class_name, kind", [
    ("ACEStep", "an audio model"), ("SD_X4Upscaler", "an upscaler"), ("Hunyuan3Dv2_1", "a 3D model"),
])
def test_families_too_costly_to_build_here_are_refused_by_class(pack, model_class_name, kind):
    import comfy.model_base

    _, families, _ = pack
    model = object.__new__(getattr(comfy.model_base, model_class_name))
    assert f"ComfyUI's {model_class_name}, {kind}" in families.training_refusal(model)


def test_a_model_whose_latent_is_not_an_image_is_refused_even_when_unknown(pack):
    import comfy.latent_formats
    import comfy.model_base

    _, families, _ = pack

    class PointCloudModel(comfy.model_base.BaseModel):  # a family LoRA Lab has never heard of
        pass

    model = object.__new__(PointCloudModel)
    model.latent_format = comfy.latent_formats.Hunyuan3Dv2()  # one-dimensional
    assert "ComfyUI's PointCloudModel, a model whose latent (1-D) is not an image or video latent" in (
        families.training_refusal(model))


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux", "sd3", "flux2", "wan21", "wan22_5b", "hunyuan_image21",
                                    "cosmos_predict2"])
def test_tested_families_train_without_a_note(pack, family, capsys):
    _, families, _ = pack
    families.check_trainable_family(family_patcher(family))
    assert capsys.readouterr().out == ""


def test_an_untested_family_trains_with_a_note_in_the_console(pack, capsys):
    import comfy.latent_formats
    import comfy.model_base

    _, families, _ = pack

    class BrandNewDiT(comfy.model_base.BaseModel):  # an image family LoRA Lab's tests have never trained
        pass

    model = object.__new__(BrandNewDiT)
    torch.nn.Module.__init__(model)
    model.latent_format = comfy.latent_formats.SD3()
    model.diffusion_model = torch.nn.Linear(1, 1)
    patcher = type("Patcher", (), {"model": model})()
    families.check_trainable_family(patcher)
    assert capsys.readouterr().out == ("[LoRA Lab] TrainLoRA: BrandNewDiT is not in LoRA Lab's tested "
                                       "families; training it through the generic path\n")
