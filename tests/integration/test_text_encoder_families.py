"""Text-encoder LoRA on the families whose CLIP holds several encoders, with ComfyUI's own encoder classes
built tiny (``tests/helpers/tiny_clips.py``) at the MODEL level: SD3 (CLIP-L, CLIP-G, T5-XXL) and Flux
(CLIP-L, T5-XXL). Each trains with Train LoRA's own path, saves kohya's lora_te1_/te2_/te3_ keys that
ComfyUI's loader takes whole, and gives at load time the conditioning training gave; T5 trains only with
train_t5; language-model encoders and quantised ones are refused before training, naming the encoder."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from comfy_inproc import load_pack, tiny_model_patcher  # noqa: E402
from tiny_clips import CLIP_SMALL, T5_SMALL, tiny_clip  # noqa: E402

from tests.integration.test_model_families import Data, FamilyCodec  # noqa: E402

pytestmark = pytest.mark.comfy

CLIP_LAYERS = CLIP_SMALL["num_hidden_layers"] * 6  # q/k/v/out projections, fc1, fc2 per layer
T5_LAYERS = T5_SMALL["num_layers"] * 7  # q/k/v/o, wi_0/wi_1/wo per block
PROBE = "a photo of sks"


@pytest.fixture(scope="module")
def pack():
    return load_pack()


def train_with_text_encoder(family: str, train_t5: bool, steps: int = 4):
    """Train LoRA's path on ``family``'s tiny model and tiny real CLIP; returns (result, clip, patcher,
    probe conditioning before / at the last step / after training)."""
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.adapters.config import LoRAConfig
    from lora_lab.trainer_core.training.config import TrainingConfig
    from lora_lab.trainer_core.training.loop import train_lora

    clip = tiny_clip(family)
    network = clip.cond_stage_model
    before = {n: (p, p.clone()) for n, p in network.named_parameters()}
    encoder = bridge.ComfyTextEncoder(clip)
    with torch.no_grad():
        base = encoder.encode([PROBE])[0]
    seen = {}

    def on_step(report):
        if report.step == report.total:  # the text encoder's LoRA is live: train-time conditioning
            with torch.no_grad():
                seen["train_time"] = encoder.encode([PROBE])[0]

    patcher = tiny_model_patcher(family)
    result = train_lora(
        bridge.ComfyDenoiser(patcher.clone()), encoder, FamilyCodec(family), Data(count=2), LoRAConfig(rank=4, alpha=4),
        TrainingConfig(steps=steps, learning_rate=1e-3, text_encoder_lr=5e-2, train_t5=train_t5, mixed_precision="fp32"),
        key_namer=bridge.kohya_key_namer(patcher), text_key_namer=bridge.clip_key_namer(clip, train_t5), on_step=on_step,
    )
    assert len(result.losses) == steps and all(torch.isfinite(torch.tensor(result.losses)))
    for name, param in network.named_parameters():  # the shared CLIP is as it was
        assert param is before[name][0] and torch.equal(param, before[name][1]), name
    with torch.no_grad():
        after = encoder.encode([PROBE])[0]
    assert all(torch.equal(after[k], base[k]) for k in base)
    return result, clip, patcher, base, seen["train_time"]


def load_time_conditioning(bridge, patcher, clip, weights, caplog):
    """The probe's conditioning through ComfyUI's own LoRA loader, with every key of the file used."""
    import comfy.lora
    import comfy.sd

    key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, comfy.lora.model_lora_keys_unet(patcher.model, {}))
    with caplog.at_level(logging.WARNING):
        patches = comfy.lora.load_lora(weights, key_map)
        _, loaded_clip = comfy.sd.load_lora_for_models(patcher, clip, weights, 1.0, 1.0)
    assert "lora key not loaded" not in caplog.text
    # Every layer has an .alpha (kohya's tensor names) or a .lora_B.weight (peft's: SD3's diffusers names).
    assert len(patches) == sum(k.endswith((".alpha", ".lora_B.weight")) for k in weights)
    with torch.no_grad():
        return bridge.ComfyTextEncoder(loaded_clip).encode([PROBE])[0]


def stems_by_prefix(weights) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in weights:
        if key.startswith("lora_te") and key.endswith(".alpha"):
            prefix = key.split("_")[1]
            counts[prefix] = counts.get(prefix, 0) + 1
    return counts


def assert_same(load_time, train_time, base, key):
    change = (train_time[key] - base[key]).abs().max().item()
    assert change > 1e-4, f"the text-encoder LoRA did not change {key}"
    torch.testing.assert_close(load_time[key], train_time[key], rtol=1e-4, atol=1e-5 + 1e-3 * change)


def test_sd3_trains_clip_l_clip_g_and_t5_under_kohyas_te1_te2_te3_and_loads_back_identically(pack, caplog):
    from lora_lab.nodes import bridge

    result, clip, patcher, base, train_time = train_with_text_encoder("sd3", train_t5=True)
    assert stems_by_prefix(result.weights) == {"te1": CLIP_LAYERS, "te2": CLIP_LAYERS, "te3": T5_LAYERS}
    assert "lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight" in result.weights
    load_time = load_time_conditioning(bridge, patcher, clip, result.weights, caplog)
    # SD3's cross_attn is CLIP-L + CLIP-G features (first 77 tokens) then T5's (the next 77): each changed.
    for tokens in (slice(0, 77), slice(77, 154)):
        part = {k: {"cross_attn": v["cross_attn"][:, tokens]} for k, v in
                {"load": load_time, "train": train_time, "base": base}.items()}
        assert_same(part["load"], part["train"], part["base"], "cross_attn")
    assert_same(load_time, train_time, base, "pooled_output")  # CLIP-L's and CLIP-G's pooled vectors


def test_flux_trains_clip_l_and_t5_with_train_t5_and_loads_back_identically(pack, caplog):
    from lora_lab.nodes import bridge

    result, clip, patcher, base, train_time = train_with_text_encoder("flux", train_t5=True)
    assert stems_by_prefix(result.weights) == {"te1": CLIP_LAYERS, "te3": T5_LAYERS}  # kohya's Flux names
    load_time = load_time_conditioning(bridge, patcher, clip, result.weights, caplog)
    assert_same(load_time, train_time, base, "cross_attn")  # Flux's cross_attn is T5's
    assert_same(load_time, train_time, base, "pooled_output")  # its pooled vector CLIP-L's


def test_flux_without_train_t5_trains_clip_l_only_and_leaves_t5s_output_alone(pack, caplog):
    from lora_lab.nodes import bridge

    result, clip, patcher, base, train_time = train_with_text_encoder("flux", train_t5=False, steps=3)
    assert stems_by_prefix(result.weights) == {"te1": CLIP_LAYERS}
    assert torch.equal(train_time["cross_attn"], base["cross_attn"])
    load_time = load_time_conditioning(bridge, patcher, clip, result.weights, caplog)
    assert torch.equal(load_time["cross_attn"], base["cross_attn"])
    assert_same(load_time, train_time, base, "pooled_output")


def meta_clip(network):
    import comfy.sd

    clip = comfy.sd.CLIP(no_init=True)
    clip.cond_stage_model = network
    return clip


@pytest.mark.parametrize("family, build, encoder", [
    ("Z-Image", "comfy.text_encoders.z_image.ZImageTEModel", "qwen3_4b (language model, Qwen3_4B, 4.0 B parameters)"),
    ("Qwen-Image", "comfy.text_encoders.qwen_image.QwenImageTEModel", "qwen25_7b (language model, Qwen25_7BVLI"),
    ("Lumina 2", "comfy.text_encoders.lumina2.LuminaModel", "gemma2_2b (language model, Gemma2_2B"),
    ("Flux.2", "comfy.text_encoders.flux.Flux2TEModel", "mistral3_24b (language model, Mistral3"),
])
def test_a_language_model_text_encoder_is_refused_before_training_naming_it(pack, family, build, encoder):
    """The real encoder classes of these families, built on the meta device (no weights are made)."""
    import importlib

    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.adapters.inject import AdapterError

    module, _, name = build.rpartition(".")
    clip = meta_clip(getattr(importlib.import_module(module), name)(device="meta", dtype=torch.bfloat16))
    for train_t5 in (False, True):
        with pytest.raises(AdapterError) as refusal:
            bridge.clip_key_namer(clip, train_t5)
        message = str(refusal.value)
        assert encoder in message and "Set text_encoder_lr to 0" in message, message


def test_hidream_trains_its_clips_and_says_which_encoders_keep_their_weights(pack):
    import comfy.text_encoders.hidream
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.training.text_encoder_parts import (
        find_text_encoder_targets,
        skipped_text_encoders_note,
    )

    clip = meta_clip(comfy.text_encoders.hidream.HiDreamTEModel(device="meta", dtype=torch.bfloat16))
    network = clip.cond_stage_model
    name = bridge.clip_key_namer(clip, train_t5=True)
    prefixes = {name(target).split("_")[1] for target in find_text_encoder_targets(network, train_t5=True)}
    assert prefixes == {"te1", "te2", "te3"}
    assert {t.split(".")[0] for t in find_text_encoder_targets(network)} == {"clip_l", "clip_g"}
    note = skipped_text_encoders_note(network, train_t5=False)
    assert note.startswith("text-encoder LoRA in clip_l, clip_g; not in t5xxl (T5, 4.8 B parameters): T5 trains "
                           "only with train_t5 on") and "llama (language model, Llama2, 7.5 B parameters)" in note


def test_a_quantised_t5_is_refused_with_train_t5_and_left_alone_without(pack):
    import comfy.text_encoders.flux
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.adapters.inject import AdapterError

    clip = meta_clip(comfy.text_encoders.flux.FluxClipModel(device="meta", dtype=torch.float16,
                                                            dtype_t5=torch.float8_e4m3fn))
    with pytest.raises(AdapterError, match=r"t5xxl \(T5, 4.8 B parameters\) is stored in torch.float8_e4m3fn .*"
                                           "Load an fp16 or bf16 copy of that encoder, turn train_t5 off, or set "
                                           "text_encoder_lr to 0"):
        bridge.clip_key_namer(clip, train_t5=True)
    name = bridge.clip_key_namer(clip, train_t5=False)
    assert name("clip_l.transformer.text_model.encoder.layers.0.mlp.fc1") == "lora_te1_text_model_encoder_layers_0_mlp_fc1"


def test_an_encoder_comfyui_has_no_kohya_name_for_is_refused_naming_it(pack):
    """AuraFlow's Pile-T5: a T5, but ComfyUI's loader maps no lora_te* name onto it."""
    import comfy.text_encoders.aura_t5
    from lora_lab.nodes import bridge

    clip = meta_clip(comfy.text_encoders.aura_t5.AuraT5Model(device="meta", dtype=torch.bfloat16))
    with pytest.raises(bridge.UnsupportedModelError, match=r"no kohya name \(lora_te\*\) for the layers of the text "
                                                           r"encoder pile_t5xl \(T5.*turn train_t5 off or set "
                                                           "text_encoder_lr to 0"):
        bridge.clip_key_namer(clip, train_t5=True)


@pytest.mark.parametrize("model_class, train_t5, expected", [
    ("Chroma", True, {"t5xxl": "lora_te1_"}),  # its lone T5: the name ComfyUI maps
    ("PixArtSigma", True, {"t5xxl": "lora_te1_"}),
    ("HunyuanVideo", True, {"clip_l": "lora_te_"}),  # its Llama keeps its weights
    ("Chroma", False, "turn train_t5 on"),
    ("WAN21_T2V", True, "no kohya name (lora_te*) for the layers of the text encoder umt5xxl (T5"),
    ("HunyuanDiT1", False, "hydit_clip (encoder, BertModel"),
])
def test_each_familys_own_text_encoder_is_named_or_refused(pack, model_class, train_t5, expected):
    """The text encoder ComfyUI builds for the family (``clip_target`` of its ``supported_models`` class,
    on the meta device): the key prefix each trained encoder gets, or the refusal naming the encoder."""
    import comfy.supported_models
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.adapters.inject import AdapterError
    from lora_lab.trainer_core.training.text_encoder_parts import find_text_encoder_targets

    config = getattr(comfy.supported_models, model_class)
    target = config(dict(config.unet_config)).clip_target({})
    clip = meta_clip(target.clip(device="meta", dtype=torch.bfloat16, model_options={}, **target.params))
    if isinstance(expected, str):
        with pytest.raises((AdapterError, bridge.UnsupportedModelError), match=re.escape(expected)):
            bridge.clip_key_namer(clip, train_t5)
        return
    name = bridge.clip_key_namer(clip, train_t5)
    prefixes = {}
    for path in find_text_encoder_targets(clip.cond_stage_model, train_t5):
        prefixes.setdefault(path.split(".")[0], set()).add(re.match(r"lora_te\d?_", name(path)).group())
    assert prefixes == {encoder: {prefix} for encoder, prefix in expected.items()}


class Stop(Exception):
    pass


def test_train_lora_refuses_a_language_model_encoder_or_names_the_skipped_ones_before_touching_the_model(
        pack, capsys):
    """Train LoRA's own training step: the text encoders are checked before the MODEL is cloned or loaded."""
    import types

    import comfy.text_encoders.flux
    import comfy.text_encoders.qwen_image
    from lora_lab.nodes import train_lora
    from lora_lab.trainer_core.adapters.inject import AdapterError
    from lora_lab.trainer_core.training.config import TrainingConfig

    model = types.SimpleNamespace(clone=lambda: (_ for _ in ()).throw(Stop()))
    run = types.SimpleNamespace(settings={}, training=TrainingConfig(text_encoder_lr=5e-5))
    qwen = meta_clip(comfy.text_encoders.qwen_image.QwenImageTEModel(device="meta", dtype=torch.bfloat16))
    with pytest.raises(AdapterError, match=r"qwen25_7b \(language model"):
        train_lora._train(run, model, qwen, None, None, 0, "AdamW", None, None, None)
    flux = meta_clip(comfy.text_encoders.flux.FluxClipModel(device="meta", dtype=torch.bfloat16))
    with pytest.raises(Stop):  # past the checks: the MODEL is cloned next
        train_lora._train(run, model, flux, None, None, 0, "AdamW", None, None, None)
    assert ("[LoRA Lab] TrainLoRA: text-encoder LoRA in clip_l; not in t5xxl (T5, 4.8 B parameters): T5 trains only "
            "with train_t5 on") in capsys.readouterr().out
