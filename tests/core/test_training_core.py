"""The training core on tiny diffusers models, without ComfyUI."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer_core.adapters.config import ADAPTER_CHOICES, LoRAConfig
from trainer_core.models.diffusers_backend import DiffusersLatentCodec, DiffusersUNetDenoiser
from trainer_core.training.config import TrainingConfig
from trainer_core.training.loop import NonFiniteLossError, train_lora


@dataclass(frozen=True)
class Item:
    caption: str
    repeats: int
    bucket: tuple[int, int]
    pattern: int


class SyntheticData:
    """Images of a bright square on a dark field, the concept the LoRA must learn."""

    def __init__(self, count: int = 4, size: int = 32):
        self.items = tuple(Item(f"sks square, picture {i}", 1, (size, size), i) for i in range(count))

    def load_image(self, item: Item) -> np.ndarray:
        w, h = item.bucket
        image = np.full((h, w, 3), 0.1, dtype=np.float32)
        offset = item.pattern % 3
        image[h // 4 + offset : 3 * h // 4, w // 4 : 3 * w // 4] = (0.9, 0.2, 0.1)
        return image


class HashTextEncoder:
    """A deterministic toy text encoder: a fixed embedding per word, averaged into 8 tokens."""

    def __init__(self, width: int = 32):
        self.width = width

    def encode(self, captions):
        out = []
        for caption in captions:
            vectors = []
            for word in caption.replace(",", " ").split():
                g = torch.Generator().manual_seed(sum(ord(c) * 31**i for i, c in enumerate(word)) % (2**31))
                vectors.append(torch.randn(self.width, generator=g))
            tokens = torch.stack(vectors).mean(0, keepdim=True).repeat(8, 1)
            out.append({"cross_attn": tokens[None]})
        return out


def tiny_models(seed: int = 0):
    from diffusers import AutoencoderTiny, DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()
    vae = AutoencoderTiny(
        encoder_block_out_channels=(16, 16, 16, 16), decoder_block_out_channels=(16, 16, 16, 16), num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)
    ).eval()
    schedule = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return unet, vae, schedule.alphas_cumprod


def make_inference(module: torch.nn.Module) -> torch.nn.Module:
    """Turn the weights into inference tensors, as ComfyUI's loaders create them."""
    with torch.inference_mode():
        for sub in module.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None:
                    sub._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
    return module


def train(steps=30, seed=0, unet=None, vae=None, alphas=None, lora=None, **training):
    if unet is None:
        unet, vae, alphas = tiny_models()
    config = TrainingConfig(steps=steps, learning_rate=training.pop("learning_rate", 2e-3), seed=seed, **training)
    return train_lora(
        DiffusersUNetDenoiser(unet, alphas),
        HashTextEncoder(),
        DiffusersLatentCodec(vae, 1.0),
        SyntheticData(),
        lora or LoRAConfig(rank=4, alpha=4),
        config,
    )


def test_core_never_imports_comfyui(monkeypatch):
    blocked = ["comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "execution", "nodes"]
    for name in list(sys.modules):
        if name == "trainer_core" or name.startswith("trainer_core."):
            monkeypatch.delitem(sys.modules, name)
    for name in blocked:
        monkeypatch.setitem(sys.modules, name, None)  # any import of these now fails
    import importlib

    core = Path(__file__).resolve().parents[2] / "trainer_core"
    modules = sorted(core.rglob("*.py"))
    assert len(modules) > 30
    for module in modules:
        parts = module.relative_to(core.parent).with_suffix("").parts
        importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))


def test_loss_falls_clearly():
    result = train(steps=160, learning_rate=5e-3, min_snr_gamma=0)
    first, last = np.mean(result.losses[:40]), np.mean(result.losses[-40:])
    assert last < 0.8 * first, (first, last)


def test_same_seed_same_lora_and_different_seed_differs():
    a, b, c = train(steps=5, seed=1), train(steps=5, seed=1), train(steps=5, seed=2)
    assert a.weights.keys() == b.weights.keys()
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert any(not torch.equal(a.weights[k], c.weights[k]) for k in a.weights)


@pytest.mark.parametrize("adapter", ADAPTER_CHOICES)
def test_shared_network_is_left_exactly_as_it_was(adapter):
    unet, vae, alphas = tiny_models()
    make_inference(unet)
    names_before = [n for n, _ in unet.named_modules()]
    attributes_before = {name: type(value) for name, value in vars(unet).items()}
    params_before = {n: p for n, p in unet.named_parameters()}
    values_before = {n: p.clone() for n, p in params_before.items()}
    sample = torch.randn(1, 4, 8, 8)
    text = HashTextEncoder().encode(["a photo"])[0]["cross_attn"]
    with torch.inference_mode():
        out_before = unet(sample, torch.tensor([500]), encoder_hidden_states=text).sample

    result = train(steps=3, unet=unet, vae=vae, alphas=alphas, lora=LoRAConfig(rank=4, alpha=4, adapter=adapter))

    assert result.steps == 3
    assert [n for n, _ in unet.named_modules()] == names_before
    assert {name: type(value) for name, value in vars(unet).items()} == attributes_before
    for name, p in unet.named_parameters():
        assert p is params_before[name], f"{name} was replaced"
        assert torch.equal(p, values_before[name])
    with torch.inference_mode():
        out_after = unet(sample, torch.tensor([500]), encoder_hidden_states=text).sample
    assert torch.equal(out_before, out_after)


def test_export_uses_kohya_keys_with_alpha():
    result = train(steps=2)
    keys = list(result.weights)
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    downs = [k for k in keys if k.endswith(".lora_down.weight")]
    assert len(downs) == len([k for k in keys if k.endswith(".lora_up.weight")]) == len([k for k in keys if k.endswith(".alpha")])
    assert all(result.weights[k].shape[0] == 4 for k in downs)
    assert all(float(result.weights[k]) == 4.0 for k in keys if k.endswith(".alpha"))


def test_progress_callback_sees_every_step_and_can_stop_training():
    unet, vae, alphas = tiny_models()
    seen = []

    class Cancelled(Exception):
        pass

    def on_step(report):
        seen.append(report.step)
        if report.step == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        train_lora(
            DiffusersUNetDenoiser(unet, alphas), HashTextEncoder(), DiffusersLatentCodec(vae, 1.0), SyntheticData(),
            LoRAConfig(rank=4, alpha=4), TrainingConfig(steps=50), on_step=on_step,
        )
    assert seen == [1, 2, 3]
    assert not any("lora_" in n for n, _ in unet.named_parameters()), "adapter left behind after cancel"


def test_non_finite_loss_stops_with_last_good_weights():
    with pytest.raises(NonFiniteLossError) as caught:
        train(steps=50, learning_rate=1e9, max_grad_norm=0)
    assert "loss became" in str(caught.value)
    assert caught.value.weights and all(torch.isfinite(t).all() for t in caught.value.weights.values())


def test_gradient_checkpointing_recomputes_blocks_and_learns_the_same_lora():
    unet, vae, alphas = tiny_models()
    calls = {"n": 0}
    block = unet.down_blocks[0].resnets[0]  # inside a checkpointed block
    handle = block.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    plain = train(steps=3, unet=unet, vae=vae, alphas=alphas)
    plain_calls, calls["n"] = calls["n"], 0
    checkpointed = train(steps=3, unet=unet, vae=vae, alphas=alphas, gradient_checkpointing=True)
    handle.remove()
    assert calls["n"] == 2 * plain_calls, "each block should run again in the backward pass"
    for key in plain.weights:
        torch.testing.assert_close(plain.weights[key], checkpointed.weights[key], rtol=1e-4, atol=1e-6)


def test_bf16_mixed_precision_trains_with_fp32_lora_weights():
    result = train(steps=4, mixed_precision="bf16")
    assert result.mixed_precision == "bf16"
    assert all(np.isfinite(result.losses))
    assert all(t.dtype == torch.float32 for t in result.weights.values())


def test_auto_precision_is_fp32_on_cpu():
    assert train(steps=1).mixed_precision == "fp32"


def test_quantized_model_is_refused_with_a_clear_message():
    from trainer_core.adapters.inject import AdapterError, check_trainable

    network = torch.nn.Sequential(torch.nn.Linear(4, 4))
    network[0].weight = torch.nn.Parameter(torch.zeros(4, 4, dtype=torch.int8), requires_grad=False)
    with pytest.raises(AdapterError) as caught:
        check_trainable(network)
    assert "quantized" in str(caught.value) and "0.weight" in str(caught.value)


def test_rank_larger_than_a_layer_is_refused_naming_the_layer():
    from trainer_core.adapters.inject import AdapterError

    unet, vae, alphas = tiny_models()
    with pytest.raises(AdapterError) as caught:
        train_lora(
            DiffusersUNetDenoiser(unet, alphas), HashTextEncoder(), DiffusersLatentCodec(vae, 1.0), SyntheticData(),
            LoRAConfig(rank=100, alpha=100), TrainingConfig(steps=1),
        )
    assert "rank 100" in str(caught.value) and "Use rank" in str(caught.value)
    assert not any("lora_" in n for n, _ in unet.named_parameters())


def run_with(tmp_path, steps, unet, vae, alphas, every=0, resume=None, on_step=None, keep_last=0, **training):
    from trainer_core.training.checkpoints import CheckpointPolicy

    return train_lora(
        DiffusersUNetDenoiser(unet, alphas), HashTextEncoder(), DiffusersLatentCodec(vae, 1.0), SyntheticData(),
        LoRAConfig(rank=4, alpha=4, dropout=0.1), TrainingConfig(steps=steps, learning_rate=2e-3, **training),
        checkpoints=CheckpointPolicy(tmp_path, "run", every=every, keep_last=keep_last),
        resume_from=resume, on_step=on_step,
    )


@pytest.mark.parametrize("ema_decay", [0.0, 0.8], ids=["plain", "ema"])
def test_resume_continues_exactly_where_training_stopped(tmp_path, ema_decay):
    unet, vae, alphas = tiny_models()
    straight = run_with(tmp_path / "straight", 8, unet, vae, alphas, gradient_accumulation=2, ema_decay=ema_decay)
    first = run_with(tmp_path / "halves", 4, unet, vae, alphas, every=4, gradient_accumulation=2, ema_decay=ema_decay)
    assert first.checkpoints == [tmp_path / "halves" / "run_step000004.safetensors"]
    resumed = run_with(tmp_path / "halves", 8, unet, vae, alphas, resume=tmp_path / "halves" / "run.lora_lab_state",
                       gradient_accumulation=2, ema_decay=ema_decay)
    assert resumed.steps == 8 and resumed.losses[:4] == first.losses
    # Same batches, noise, dropout and optimizer moments: equal up to float summation order.
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=1e-5)
    # The files of every step, for the loss diagnosis, before the resume too: 2 accumulated batches of 1.
    assert resumed.batch_files == straight.batch_files and len(straight.batch_files) == 8
    assert all(len(files) == 2 for files in straight.batch_files)
    # With EMA the exported weights are the average, which the resume state carries on.
    for key in straight.weights:
        torch.testing.assert_close(resumed.weights[key], straight.weights[key], rtol=1e-5, atol=1e-7)


def test_checkpoints_are_loadable_loras_and_only_the_last_k_are_kept(tmp_path):
    from trainer_core.adapters.export import load_lora

    unet, vae, alphas = tiny_models()
    result = run_with(tmp_path, 6, unet, vae, alphas, every=2, keep_last=2)
    names = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert names == ["run_step000004.safetensors", "run_step000006.safetensors"]
    last = load_lora(tmp_path / "run_step000006.safetensors")
    assert last.steps == 6 and set(last) == set(result.weights)
    assert all(torch.equal(last[k], result.weights[k]) for k in last)


def test_cancel_writes_a_resumable_checkpoint_at_the_last_finished_step(tmp_path):
    unet, vae, alphas = tiny_models()

    class Cancelled(Exception):
        pass

    def cancel_at_three(report):
        if report.step == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        run_with(tmp_path, 50, unet, vae, alphas, on_step=cancel_at_three)
    assert (tmp_path / "run_step000003.safetensors").is_file() and (tmp_path / "run.lora_lab_state").is_file()
    resumed = run_with(tmp_path, 5, unet, vae, alphas, resume=tmp_path / "run.lora_lab_state")
    assert resumed.steps == 5 and len(resumed.losses) == 5


def test_a_broken_or_mismatched_resume_state_is_refused_clearly(tmp_path):
    from trainer_core.training.checkpoints import ResumeError

    unet, vae, alphas = tiny_models()
    broken = tmp_path / "broken.lora_lab_state"
    broken.write_bytes(b"not a state")
    with pytest.raises(ResumeError, match="cannot be read"):
        run_with(tmp_path, 2, unet, vae, alphas, resume=broken)
    run_with(tmp_path, 2, unet, vae, alphas, every=2)
    with pytest.raises(Exception, match="raise steps"):
        run_with(tmp_path, 2, unet, vae, alphas, resume=tmp_path / "run.lora_lab_state")


def test_the_lora_file_loads_in_diffusers_and_gives_the_train_time_output(tmp_path):
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers

    from trainer_core.adapters.export import load_lora, save_lora

    unet, vae, alphas = tiny_models()
    denoiser = DiffusersUNetDenoiser(unet, alphas)
    probe = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    sigma = denoiser.training_sigmas[400].reshape(1)
    text = HashTextEncoder().encode(["sks square"])[0]
    seen = {}

    def on_step(report):
        if report.step == report.total:
            with torch.no_grad():
                seen["train_time"] = denoiser.denoise(probe, sigma, text)

    result = train_lora(denoiser, HashTextEncoder(), DiffusersLatentCodec(vae, 1.0), SyntheticData(),
                        LoRAConfig(rank=4, alpha=2), TrainingConfig(steps=5, learning_rate=1e-2), on_step=on_step)
    path = save_lora(result.weights, tmp_path / "lora.safetensors")

    # diffusers' own kohya conversion, then its own LoRA loading, on a fresh copy of the same UNet.
    converted, network_alphas = _convert_non_diffusers_lora_to_diffusers(dict(load_lora(path)))
    fresh, _, _ = tiny_models()
    fresh.load_lora_adapter(converted, prefix="unet", network_alphas=network_alphas, adapter_name="lab")
    with torch.no_grad():
        loaded = DiffusersUNetDenoiser(fresh, alphas).denoise(probe, sigma, text)
        base = DiffusersUNetDenoiser(tiny_models()[0], alphas).denoise(probe, sigma, text)
    change = (seen["train_time"] - base).abs().max().item()
    assert change > 1e-4
    torch.testing.assert_close(loaded, seen["train_time"], rtol=1e-4, atol=1e-3 * change)


def test_fp16_mixed_precision_trains_with_loss_scaling_and_fp32_lora_weights(monkeypatch):
    scales = []
    original_update = torch.amp.GradScaler.update

    def record(self, *args, **kwargs):
        scales.append(self.get_scale() if self.is_enabled() else None)
        return original_update(self, *args, **kwargs)

    monkeypatch.setattr(torch.amp.GradScaler, "update", record)
    result = train(steps=3, mixed_precision="fp16")
    assert result.mixed_precision == "fp16" and all(np.isfinite(result.losses))
    assert scales and all(s is not None and s > 1 for s in scales), "fp16 must scale the loss"
    assert all(t.dtype == torch.float32 for t in result.weights.values())
