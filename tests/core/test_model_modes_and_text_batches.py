"""The loop runs the base network as ComfyUI does (eval mode) with only the adapter in train mode, and
batches captions of different token lengths the way each kind of conditioning allows."""

from __future__ import annotations

import torch

from tests.core.test_training_core import HashTextEncoder, SyntheticData, tiny_models
from trainer_core.adapters.config import LoRAConfig
from trainer_core.models.diffusers_backend import DiffusersLatentCodec, DiffusersUNetDenoiser
from trainer_core.training.config import TrainingConfig
from trainer_core.training.encoding import concat_text
from trainer_core.training.loop import train_lora


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


def test_captions_of_different_lengths_with_attention_masks_pad_with_masked_out_zeros():
    short = {"cross_attn": torch.ones(1, 2, 3), "attention_mask": torch.ones(1, 2), "pooled_output": torch.ones(1, 4)}
    long = {"cross_attn": 2 * torch.ones(1, 3, 3), "attention_mask": torch.ones(1, 3), "pooled_output": torch.ones(1, 4)}
    batch = concat_text([short, long])
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert batch["cross_attn"].shape == (2, 3, 3)
    assert torch.equal(batch["cross_attn"][0, 2], torch.zeros(3)) and torch.equal(batch["cross_attn"][1], long["cross_attn"][0])
    assert batch["pooled_output"].shape == (2, 4)


def test_several_masked_sequences_and_stacked_layers_pad_each_to_its_own_longest():
    # HunyuanDiT: CLIP tokens with one mask, mT5 tokens with another; HiDream-like stacked layers [B, L, T, D].
    def caption(n, m):
        return {"cross_attn": torch.ones(1, n, 2), "attention_mask": torch.ones(1, n),
                "conditioning_mt5xl": torch.ones(1, m, 2), "attention_mask_mt5xl": torch.ones(1, m),
                "stacked": torch.ones(1, 4, n, 2)}

    batch = concat_text([caption(2, 5), caption(3, 4)])
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert batch["attention_mask_mt5xl"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch["conditioning_mt5xl"].shape == (2, 5, 2) and batch["stacked"].shape == (2, 4, 3, 2)
    assert batch["stacked"][0, :, 2].abs().sum() == 0


def test_unmasked_token_sequences_still_repeat_to_a_common_length_as_comfyui_batches_them():
    a = {"cross_attn": torch.arange(2.0).reshape(1, 2, 1)}
    b = {"cross_attn": torch.arange(3.0).reshape(1, 3, 1)}
    batch = concat_text([a, b])
    assert batch["cross_attn"][:, :, 0].tolist() == [[0, 1, 0, 1, 0, 1], [0, 1, 2, 0, 1, 2]]
