"""Text-encoder LoRA with its own learning rate, and clip skip, on tiny diffusers/transformers models."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_training_core import HashTextEncoder, SyntheticData, make_inference, tiny_models  # noqa: E402

from trainer_core.adapters.config import LoRAConfig
from trainer_core.models.diffusers_backend import (
    DiffusersLatentCodec,
    DiffusersUNetDenoiser,
    TransformersTextEncoder,
)
from trainer_core.training.checkpoints import CheckpointPolicy, ResumeError
from trainer_core.training.config import TrainingConfig
from trainer_core.training.loop import train_lora
from trainer_core.training.metadata import training_metadata

LAYERS = 3
LINEARS = ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj", "mlp_fc1", "mlp_fc2")


class WordTokenizer:
    """Word ids from a hash, between a start and an end token, padded: enough for a tiny CLIP."""

    def __call__(self, texts, padding, max_length, truncation, return_tensors):
        rows = []
        for text in texts:
            words = [3 + sum(map(ord, w)) % 90 for w in text.replace(",", " ").split()]
            ids = ([0, *words] + [1])[:max_length]
            rows.append(ids + [2] * (max_length - len(ids)))
        return {"input_ids": torch.tensor(rows)}


def tiny_clip(seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                            num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                            pad_token_id=2)
    return CLIPTextModel(config).eval()


class CountingEncoder(TransformersTextEncoder):
    calls = 0

    def encode(self, captions):
        type(self).calls += 1
        return super().encode(captions)


def run(steps=4, text_encoder_lr=1e-3, clip_skip=1, clip=None, models=None, encoder_class=TransformersTextEncoder,
        denoiser=None, **options):
    unet, vae, alphas = models or tiny_models()
    clip = clip if clip is not None else tiny_clip()
    return train_lora(
        denoiser or DiffusersUNetDenoiser(unet, alphas), encoder_class(clip, WordTokenizer(), max_length=16),
        DiffusersLatentCodec(vae, 1.0), SyntheticData(), LoRAConfig(rank=4, alpha=4, dropout=options.pop("dropout", 0.0)),
        TrainingConfig(steps=steps, learning_rate=2e-3, text_encoder_lr=text_encoder_lr, clip_skip=clip_skip, seed=0),
        **options,
    )


def text_keys(weights):
    return {k for k in weights if k.startswith("lora_te")}


def test_text_encoder_lr_zero_trains_the_unet_only_and_encodes_each_caption_once():
    CountingEncoder.calls = 0
    result = run(steps=6, text_encoder_lr=0, encoder_class=CountingEncoder)
    assert result.weights and all(k.startswith("lora_unet_") for k in result.weights)
    assert CountingEncoder.calls == 1  # the four captions, once, before training


def test_text_encoder_lora_gets_kohya_keys_for_every_attention_and_mlp_linear_and_learns():
    CountingEncoder.calls = 0
    result = run(steps=6, encoder_class=CountingEncoder)
    assert CountingEncoder.calls == 6  # once per step: the captions go through the LoRA being trained
    expected = {f"lora_te_text_model_encoder_layers_{i}_{name}" for i in range(LAYERS) for name in LINEARS}
    stems = {k.split(".")[0] for k in text_keys(result.weights)}
    assert stems == expected
    for stem in expected:
        assert result.weights[f"{stem}.alpha"].item() == 4.0
        assert result.weights[f"{stem}.lora_down.weight"].shape[0] == 4
        assert result.weights[f"{stem}.lora_up.weight"].abs().max() > 0, f"{stem} learned nothing"
    assert any(k.startswith("lora_unet_") for k in result.weights)


def test_text_encoder_learns_at_its_own_rate():
    # Adam moves each weight by about its learning rate per step: 10x the rate, about 10x the change.
    fast = run(steps=4, text_encoder_lr=1e-3).weights
    slow = run(steps=4, text_encoder_lr=1e-4).weights
    ups = [k for k in text_keys(fast) if k.endswith("lora_up.weight")]
    ratio = np.mean([fast[k].abs().mean().item() for k in ups]) / np.mean([slow[k].abs().mean().item() for k in ups])
    assert 6 < ratio < 14, ratio
    unet_ups = [k for k in fast if k.startswith("lora_unet_") and k.endswith("lora_up.weight")]
    unet_ratio = np.mean([fast[k].abs().mean().item() for k in unet_ups]) / np.mean(
        [slow[k].abs().mean().item() for k in unet_ups])
    assert 0.8 < unet_ratio < 1.25, unet_ratio  # the UNet's own rate did not change


def test_shared_text_encoder_is_left_exactly_as_it_was():
    clip = make_inference(tiny_clip())
    names_before = [n for n, _ in clip.named_modules()]
    params_before = {n: (p, p.clone()) for n, p in clip.named_parameters()}
    ids = WordTokenizer()(["sks square"], "max_length", 16, True, "pt")["input_ids"]
    with torch.inference_mode():
        out_before = clip(ids).last_hidden_state
    run(steps=3, clip=clip, dropout=0.1)
    assert [n for n, _ in clip.named_modules()] == names_before
    assert not clip.training and not any(m.training for m in clip.modules())
    for name, param in clip.named_parameters():
        assert param is params_before[name][0] and torch.equal(param, params_before[name][1]), name
    with torch.inference_mode():
        assert torch.equal(clip(ids).last_hidden_state, out_before)


@pytest.mark.parametrize("name", ["constant_with_warmup", "cosine", "linear", "polynomial", "cosine_with_restarts"])
def test_schedulers_scale_the_text_encoder_group_with_the_unet_group(name):
    from trainer_core.training.optimizers import OptimizerConfig, build_optimizer
    from trainer_core.training.schedulers import SchedulerConfig, build_scheduler
    from trainer_core.training.text_encoder import parameter_groups

    unet_params = [torch.nn.Parameter(torch.zeros(3))]
    text_params = [torch.nn.Parameter(torch.zeros(3))]
    groups = parameter_groups(unet_params, text_params, 2.5e-5, set_rate=True)
    optimizer = build_optimizer(groups, OptimizerConfig(name="AdamW", learning_rate=1e-4), "cpu")
    scheduler = build_scheduler(optimizer, SchedulerConfig(name=name, warmup=0.1,
                                                           min_lr_ratio=0.1 if name == "polynomial" else 0.0), 40)
    seen = []
    for _ in range(40):
        seen.append((optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"]))
        optimizer.step()
        scheduler.step()
    unet_rates = np.array([u for u, _ in seen])
    text_rates = np.array([t for _, t in seen])
    assert unet_rates.max() == pytest.approx(1e-4) and len(set(unet_rates.round(12))) > 2  # it does schedule
    np.testing.assert_allclose(text_rates, unet_rates * 0.25, rtol=1e-9, atol=1e-15)


def test_resume_with_a_text_encoder_lora_continues_exactly(tmp_path):
    models = tiny_models()

    def go(folder, steps, every=0, resume=None, text_encoder_lr=1e-3):
        return run(steps=steps, models=models, dropout=0.1, text_encoder_lr=text_encoder_lr,
                   checkpoints=CheckpointPolicy(folder, "run", every=every), resume_from=resume)

    straight = go(tmp_path / "straight", 6)
    go(tmp_path / "halves", 3, every=3)
    resumed = go(tmp_path / "halves", 6, resume=tmp_path / "halves" / "run.lora_lab_state")
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=1e-5)
    assert text_keys(straight.weights) and straight.weights.keys() == resumed.weights.keys()
    for key in text_keys(straight.weights):
        torch.testing.assert_close(resumed.weights[key], straight.weights[key], rtol=1e-5, atol=1e-7)
    with pytest.raises(ResumeError, match="text_encoder_lr"):
        go(tmp_path / "halves", 9, resume=tmp_path / "halves" / "run.lora_lab_state", text_encoder_lr=0)


class RecordingDenoiser(DiffusersUNetDenoiser):
    seen: list[torch.Tensor]

    def denoise(self, noisy, sigma, text):
        self.seen.append(text["cross_attn"].detach().clone())
        return super().denoise(noisy, sigma, text)


@pytest.mark.parametrize("text_encoder_lr", [0.0, 1e-3])
def test_clip_skip_2_trains_on_the_penultimate_layer(text_encoder_lr):
    clip = tiny_clip()
    captions = [item.caption for item in SyntheticData().items]
    ids = WordTokenizer()(captions, "max_length", 16, True, "pt")["input_ids"]
    with torch.no_grad():
        output = clip(ids, output_hidden_states=True)
        text_model = getattr(clip, "text_model", clip)
        references = {1: output.last_hidden_state, 2: text_model.final_layer_norm(output.hidden_states[-2])}
    assert not torch.allclose(references[1], references[2], atol=1e-3)

    def matches(text, skip):
        return any(torch.allclose(text[0], ref, atol=1e-5) for ref in references[skip])

    for clip_skip, other in ((1, 2), (2, 1)):
        unet, vae, alphas = tiny_models()
        denoiser = RecordingDenoiser(unet, alphas)
        denoiser.seen = []
        run(steps=3, text_encoder_lr=text_encoder_lr, clip_skip=clip_skip, clip=clip, denoiser=denoiser,
            models=(unet, vae, alphas))
        # The first step's conditioning (the text encoder's LoRA, if any, is still zero then).
        first = denoiser.seen[0]
        assert matches(first, clip_skip) and not matches(first, other), clip_skip


def test_clip_skip_needs_an_encoder_that_can_stop_early_and_a_valid_value():
    unet, vae, alphas = tiny_models()
    with pytest.raises(ValueError, match="clip_skip"):
        train_lora(DiffusersUNetDenoiser(unet, alphas), HashTextEncoder(), DiffusersLatentCodec(vae, 1.0),
                   SyntheticData(), LoRAConfig(rank=4, alpha=4), TrainingConfig(steps=1, clip_skip=2))
    with pytest.raises(ValueError, match="clip_skip 4 is more than the text encoder's 3 layers"):
        run(steps=1, clip_skip=4)
    with pytest.raises(ValueError, match="clip_skip"):
        TrainingConfig(clip_skip=0)
    with pytest.raises(ValueError, match="text_encoder_lr"):
        TrainingConfig(text_encoder_lr=-1e-4)


def test_text_encoder_lr_above_zero_needs_a_trainable_text_encoder():
    from trainer_core.adapters.inject import AdapterError

    unet, vae, alphas = tiny_models()
    with pytest.raises(AdapterError, match="set text_encoder_lr to 0"):
        train_lora(DiffusersUNetDenoiser(unet, alphas), HashTextEncoder(), DiffusersLatentCodec(vae, 1.0),
                   SyntheticData(), LoRAConfig(rank=4, alpha=4), TrainingConfig(steps=1, text_encoder_lr=1e-4))


def test_metadata_records_text_encoder_training_and_clip_skip():
    def meta(**training):
        return training_metadata(
            LoRAConfig(), TrainingConfig(**training), steps=1, total_steps=1, num_images=1, samples_per_epoch=1,
            resolution=64, trigger_word="", tag_frequency={}, dataset_dirs={}, base_model_version="sd_v1",
            base_model_hash="0" * 64, started_at=0.0, finished_at=1.0, mixed_precision="fp32",
        )

    unet_only = meta()
    assert unet_only["ss_network_train_unet_only"] == "true" and unet_only["ss_text_encoder_lr"] == "0.0"
    assert unet_only["ss_clip_skip"] == "1"
    both = meta(learning_rate=1e-4, text_encoder_lr=5e-5, clip_skip=2)
    assert both["ss_network_train_unet_only"] == "false" and both["ss_text_encoder_lr"] == "5e-05"
    assert both["ss_clip_skip"] == "2" and both["ss_unet_lr"] == "0.0001"
