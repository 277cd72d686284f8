"""The loop runs the base network as ComfyUI does (eval mode) with only the adapter in train mode, and
batches captions of different token lengths the way ComfyUI batches each kind of conditioning."""

from __future__ import annotations

import pytest
import torch

from tests.core.test_training_core import HashTextEncoder, SyntheticData, tiny_models
from trainer_core.adapters.config import LoRAConfig
from trainer_core.models.diffusers_backend import DiffusersLatentCodec, DiffusersUNetDenoiser
from trainer_core.training.config import TrainingConfig
from trainer_core.training.encoding import concat_text, text_groups
from trainer_core.training.loop import train_lora
from trainer_core.training.step import denoise_in_text_groups


def test_base_network_runs_in_eval_mode_while_lora_dropout_is_on_and_every_mode_comes_back():
    unet, vae, alphas = tiny_models()
    unet.train()
    unet.mid_block.eval()  # a mix of modes, each to come back as it was
    modes_before = {name: m.training for name, m in unet.named_modules()}
    names = {module: name for name, module in unet.named_modules()}
    seen: dict[str, set[bool]] = {}

    def record(module, args):
        seen.setdefault(names[module], set()).add(module.training)

    hooks = [module.register_forward_pre_hook(record) for module in names]
    lora_dropout_modes: set[bool] = set()

    def record_lora_dropout(module, args):
        if isinstance(module, torch.nn.Dropout) and module.p == 0.5:  # the LoRA's; the UNet's own have p=0
            lora_dropout_modes.add(module.training)

    global_hook = torch.nn.modules.module.register_module_forward_pre_hook(record_lora_dropout)
    try:
        result = train_lora(
            DiffusersUNetDenoiser(unet, alphas), HashTextEncoder(), DiffusersLatentCodec(vae, 1.0), SyntheticData(),
            LoRAConfig(rank=4, alpha=4, dropout=0.5), TrainingConfig(steps=2, learning_rate=1e-3),
        )
    finally:
        global_hook.remove()
        for hook in hooks:
            hook.remove()
    assert len(result.losses) == 2
    assert seen and all(modes == {False} for modes in seen.values()), {n: m for n, m in seen.items() if True in m}
    assert lora_dropout_modes == {True}, "LoRA dropout must be active while training"
    assert {name: m.training for name, m in unet.named_modules()} == modes_before


def test_captions_whose_attention_masks_differ_in_length_run_in_separate_passes_as_comfyui_runs_them():
    def caption(n, value=1.0):
        return {"cross_attn": value * torch.ones(1, n, 3), "attention_mask": torch.ones(1, n), "pooled_output": torch.ones(1, 4)}

    embeddings = [caption(2), caption(3), caption(2, 2.0)]
    assert text_groups(embeddings) == [[0, 2], [1]]
    assert text_groups([{"cross_attn": torch.ones(1, n, 3)} for n in (2, 3)]) == [[0, 1]]  # no mask: one batch
    with pytest.raises(ValueError, match="text_groups"):
        concat_text(embeddings)

    calls = []

    class Recorder:
        def denoise(self, noisy, sigma, text):
            calls.append((noisy.shape[0], text["attention_mask"].shape))
            return noisy * text["cross_attn"].mean()

    noisy = torch.arange(3.0).reshape(3, 1)
    estimate = denoise_in_text_groups(Recorder(), noisy, torch.ones(3), embeddings)
    assert calls == [(2, (2, 2)), (1, (1, 3))]
    assert estimate.flatten().tolist() == [0.0, 1.0, 2.0 * 1.5]  # each row back in its place


def test_stacked_layers_repeat_along_their_token_axis():
    # HiDream's Llama conditioning stacks layers: [1, layers, tokens, width].
    batch = concat_text([{"stacked": torch.ones(1, 4, n, 2)} for n in (2, 3)])
    assert batch["stacked"].shape == (2, 4, 6, 2)


def test_unmasked_token_sequences_still_repeat_to_a_common_length_as_comfyui_batches_them():
    a = {"cross_attn": torch.arange(2.0).reshape(1, 2, 1)}
    b = {"cross_attn": torch.arange(3.0).reshape(1, 3, 1)}
    batch = concat_text([a, b])
    assert batch["cross_attn"][:, :, 0].tolist() == [[0, 1, 0, 1, 0, 1], [0, 1, 2, 0, 1, 2]]
