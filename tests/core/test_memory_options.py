"""Memory options: optimizer state in RAM, and base weights stored in a lower precision.

This machine has no GPU, so "the optimizer state lives on the CPU while training runs elsewhere" is
shown with the placement's state device as a parameter: the decision function is checked for a CUDA
training device, and the offloaded path itself (separate fp32 copies, gradients and values copied each
step) is forced on while training on the CPU, where its results must equal the normal path exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import trainer_core.training.run
from tests.core.test_training_core import HashTextEncoder, SyntheticData, tiny_models
from trainer_core.adapters.config import LoRAConfig
from trainer_core.models.diffusers_backend import DiffusersLatentCodec, DiffusersUNetDenoiser
from trainer_core.training.config import TrainingConfig
from trainer_core.training.loop import train_lora
from trainer_core.training.memory import (
    OptimizerPlacement,
    base_weight_dtype,
    check_state_on_cpu,
    low_precision_copy,
    needs_low_precision_copy,
    optimizer_state_device,
    stored_weight_bytes,
)
from trainer_core.training.optimizers import OptimizerConfig, build_optimizer


def train(unet=None, steps=6, **training):
    fresh, vae, alphas = tiny_models()
    return train_lora(
        DiffusersUNetDenoiser(unet if unet is not None else fresh, alphas),
        HashTextEncoder(),
        DiffusersLatentCodec(vae, 1.0),
        SyntheticData(),
        LoRAConfig(rank=4, alpha=4),
        TrainingConfig(steps=steps, learning_rate=5e-3, **training),
    )


# -- optimizer state on the CPU ---------------------------------------------------------------------------


def test_state_goes_to_the_cpu_only_when_training_runs_elsewhere():
    assert optimizer_state_device(torch.device("cuda", 0), True) == torch.device("cpu")
    assert optimizer_state_device(torch.device("cuda", 0), False) is None
    assert optimizer_state_device(torch.device("cpu"), True) is None  # nothing to move


def test_on_a_cpu_machine_the_option_changes_nothing():
    plain, on_cpu = train(), train(optimizer_state_on_cpu=True)
    assert all(torch.equal(plain.weights[k], on_cpu.weights[k]) for k in plain.weights)


def test_the_offloaded_path_keeps_state_on_its_device_apart_from_the_model():
    state_device = torch.device("cpu")  # the only device here; on a GPU machine this is the RAM side
    torch.manual_seed(0)
    model_params = [torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(4))]
    placement = OptimizerPlacement(model_params, state_device)
    optimizer = build_optimizer(placement.params, OptimizerConfig(name="AdamW", learning_rate=0.1), "cpu")

    for model_param in model_params:
        model_param.grad = torch.ones_like(model_param)
    placement.gradients_to_optimizer()
    assert all(p.grad is None for p in model_params), "the model's gradients are handed over, not kept"
    optimizer.step()
    placement.parameters_to_model()

    states = [
        t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t) and t.ndim
    ]
    assert len(states) == 4  # Adam's two moments per parameter
    assert all(t.device == state_device for t in states)
    model_storage = {p.untyped_storage().data_ptr() for p in model_params}
    assert not {p.untyped_storage().data_ptr() for p in placement.params} & model_storage
    assert all(p.dtype == torch.float32 for p in placement.params)
    for model_param, param in zip(model_params, placement.params, strict=True):
        assert torch.equal(model_param, param)  # the step reached the model


def test_the_offloaded_path_trains_exactly_like_the_normal_one_and_resumes(tmp_path, monkeypatch):
    from trainer_core.training.checkpoints import CheckpointPolicy

    plain = train(steps=6, max_grad_norm=0.5)
    monkeypatch.setattr(
        trainer_core.training.run, "optimizer_state_device", lambda device, on_cpu: torch.device("cpu")
    )
    offloaded = train(steps=6, max_grad_norm=0.5, optimizer_state_on_cpu=True)
    # Same fp32 arithmetic on copies: tolerance zero.
    assert offloaded.losses == plain.losses
    assert all(torch.equal(plain.weights[k], offloaded.weights[k]) for k in plain.weights)

    policy = CheckpointPolicy(tmp_path, "run", every=3)
    unet, vae, alphas = tiny_models()
    config = dict(learning_rate=5e-3, max_grad_norm=0.5, optimizer_state_on_cpu=True)
    for steps, resume in ((3, None), (6, policy.state_path)):
        resumed = train_lora(
            DiffusersUNetDenoiser(unet, alphas),
            HashTextEncoder(),
            DiffusersLatentCodec(vae, 1.0),
            SyntheticData(),
            LoRAConfig(rank=4, alpha=4),
            TrainingConfig(steps=steps, **config),
            checkpoints=policy,
            resume_from=resume,
        )
    np.testing.assert_allclose(resumed.losses, plain.losses, rtol=1e-5)
    for key in plain.weights:
        torch.testing.assert_close(resumed.weights[key], plain.weights[key], rtol=1e-5, atol=1e-7)


def test_eight_bit_optimizers_with_state_on_the_cpu_are_refused_naming_the_fix():
    with pytest.raises(ValueError, match="optimizer_state_on_cpu cannot be used with AdamW8bit"):
        check_state_on_cpu("AdamW8bit", True)
    check_state_on_cpu("AdamW", True)
    check_state_on_cpu("AdamW8bit", False)


# -- base weights in a lower precision --------------------------------------------------------------------


@pytest.mark.parametrize(
    "choice, ratio", [("bf16", 0.5), ("fp16", 0.5), ("fp8_e4m3fn", 0.25), ("fp8_e5m2", 0.25)]
)
def test_the_copy_stores_weights_in_the_chosen_precision_and_leaves_the_original(choice, ratio):
    unet = tiny_models()[0]
    before = {n: (p, p.detach().clone()) for n, p in unet.named_parameters()}
    copy = low_precision_copy(unet, base_weight_dtype(choice))

    original_bytes = sum(stored_weight_bytes(unet).values())
    copy_bytes = sum(stored_weight_bytes(copy).values())
    assert (
        stored_weight_bytes(copy)[
            choice.replace("fp8_", "float8_").replace("bf16", "bfloat16").replace("fp16", "float16")
        ]
        > 0.9 * copy_bytes
    )
    assert copy_bytes < (ratio + 0.05) * original_bytes  # biases and norms stay fp32: a few percent
    for name, param in unet.named_parameters():
        assert (
            param is before[name][0] and param.dtype == torch.float32 and torch.equal(param, before[name][1])
        )
    assert not any(p.requires_grad for p in copy.parameters())
    assert not needs_low_precision_copy(copy, base_weight_dtype(choice))
    assert not needs_low_precision_copy(unet, None)


@pytest.mark.parametrize(
    "layer", [torch.nn.Linear(12, 6), torch.nn.Conv2d(4, 6, 3, padding=1, stride=2)], ids=["linear", "conv2d"]
)
def test_upcast_layers_compute_and_backpropagate_like_the_full_precision_layer(layer):
    """With weights that bf16 holds exactly, the bf16 copy must give the same output and input gradient."""
    with torch.no_grad():
        layer.weight.copy_(layer.weight.to(torch.bfloat16).float())
        layer.bias.copy_(torch.randn_like(layer.bias))
    copy = low_precision_copy(torch.nn.Sequential(layer), torch.bfloat16)[0]
    assert copy.weight.dtype == torch.bfloat16 and copy.bias.dtype == torch.float32
    shape = (3, 12) if isinstance(layer, torch.nn.Linear) else (2, 4, 9, 9)
    x = torch.randn(shape, requires_grad=True)
    x_copy = x.detach().clone().requires_grad_(True)
    out, out_copy = layer(x), copy(x_copy)
    torch.testing.assert_close(out_copy, out, rtol=1e-6, atol=1e-6)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_copy.backward(grad)
    torch.testing.assert_close(x_copy.grad, x.grad, rtol=1e-6, atol=1e-6)


def test_the_backward_pass_keeps_only_the_stored_low_precision_weight():
    copy = low_precision_copy(torch.nn.Sequential(torch.nn.Linear(16, 16)), torch.float8_e4m3fn)
    saved = []
    x = torch.randn(2, 16, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        copy(x).sum().backward()
    assert [(t.dtype, tuple(t.shape)) for t in saved] == [(torch.float8_e4m3fn, (16, 16))]


def test_training_on_an_fp8_copy_sees_fp8_weights_and_learns():
    unet = tiny_models()[0]
    copy = low_precision_copy(unet, torch.float8_e4m3fn)
    layer = copy.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    seen = []
    handle = layer.register_forward_pre_hook(lambda module, args: seen.append(module.weight.dtype))
    result = train(copy, steps=20, min_snr_gamma=0)
    handle.remove()
    assert seen and set(seen) == {torch.float8_e4m3fn}
    assert all(np.isfinite(result.losses))
    assert max(result.weights[k].abs().max().item() for k in result.weights if ".lora_up." in k) > 1e-3
