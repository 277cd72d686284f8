"""The loop runs the base network as ComfyUI does (eval mode) with only the adapter in train mode."""

from __future__ import annotations

import torch

from tests.core.test_training_core import HashTextEncoder, SyntheticData, tiny_models
from trainer_core.adapters.config import LoRAConfig
from trainer_core.models.diffusers_backend import DiffusersLatentCodec, DiffusersUNetDenoiser
from trainer_core.training.config import TrainingConfig
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

