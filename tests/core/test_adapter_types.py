"""LoRA, LoHa, LoKr and DoRA: what peft trains is what ComfyUI's loader will compute from the file.

``comfy_style_weight`` below is the arithmetic of ComfyUI's loader (``comfy/weight_adapter/lora.py``,
``loha.py``, ``lokr.py`` and ``base.py:weight_decompose``, read in ComfyUI 0.3.75) written out for
the layouts we save, so these tests run without ComfyUI. The integration tests check the same files
through the real loader.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from tests.core.test_training_core import HashTextEncoder, SyntheticData, tiny_models
from trainer_core.adapters.adapter_types import network_metadata
from trainer_core.adapters.config import ADAPTER_CHOICES, LoRAConfig
from trainer_core.adapters.inject import inject_adapter
from trainer_core.models.diffusers_backend import DiffusersLatentCodec, DiffusersUNetDenoiser
from trainer_core.training.config import TrainingConfig
from trainer_core.training.loop import TrainingError, extract_weights, train_lora

FLOAT32_EPS = torch.finfo(torch.float32).eps


def comfy_style_weight(weight: torch.Tensor, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The weight ComfyUI's LoRA loader makes at strength 1 from one layer's saved tensors (float64)."""
    base = weight.double()
    t = {name: value.double() for name, value in tensors.items()}
    alpha = float(t["alpha"])
    if "lora_up.weight" in t:
        up, down = t["lora_up.weight"], t["lora_down.weight"]
        merged = base + alpha / down.shape[0] * (up.flatten(1) @ down.flatten(1)).reshape(base.shape)
        if "dora_scale" not in t:
            return merged
        scale = t["dora_scale"]
        assert scale.shape == (base.shape[0], *[1] * (base.dim() - 1)), "we write DoRA per output row"
        # ComfyUI's per-output-row branch divides by the norm of the weight before the update.
        row_norm = base.reshape(base.shape[0], -1).norm(dim=1).reshape(scale.shape) + FLOAT32_EPS
        return merged * scale / row_norm
    if "hada_w1_a" in t:
        product = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
        return base + alpha / t["hada_w1_b"].shape[0] * product.reshape(base.shape)
    w1, w2, low_rank = t.get("lokr_w1"), t.get("lokr_w2"), None
    if w1 is None:
        w1, low_rank = t["lokr_w1_a"] @ t["lokr_w1_b"], t["lokr_w1_b"].shape[0]
    if w2 is None:
        w2, low_rank = t["lokr_w2_a"] @ t["lokr_w2_b"], t["lokr_w2_b"].shape[0]
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    scale = alpha / low_rank if low_rank is not None else 1.0  # both factors full: no alpha scaling
    return base + scale * torch.kron(w1, w2).reshape(base.shape)


class SpatialTransformer(nn.Module):
    """Named like SD's block so 'attention' targets its linear layers and its 1x1 convolution."""

    def __init__(self):
        super().__init__()
        self.to_q = nn.Linear(320, 768)
        self.proj_in = nn.Conv2d(320, 320, 1)


def randomise(adapter, seed: int) -> None:
    """peft starts every type as a no-op: give all factors values so the test sees a real update."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in adapter.named_parameters().items():
            noise = torch.randn(param.shape, generator=g)
            if "magnitude" in name:
                param.mul_(1 + 0.1 * noise)
            else:
                param.copy_(0.2 * noise)


def layer_tensors(weights: dict[str, torch.Tensor], stem: str) -> dict[str, torch.Tensor]:
    return {key[len(stem) + 1 :]: value for key, value in weights.items() if key.startswith(stem + ".")}


@pytest.mark.parametrize("adapter", ADAPTER_CHOICES)
@pytest.mark.parametrize("rank, rslora", [(4, False), (16, True)])
def test_saved_tensors_applied_the_comfyui_way_give_the_peft_layers_output(adapter, rank, rslora):
    torch.manual_seed(0)
    network = nn.Module()
    network.block = SpatialTransformer()
    injected = inject_adapter(network, LoRAConfig(rank=rank, alpha=3.0, adapter=adapter, rslora=rslora), seed=0)
    randomise(injected, seed=rank)
    network.eval()
    weights = extract_weights(injected, lambda path: path)
    if adapter == "lokr":  # rank 4 keeps LoKr's second factor low-rank, rank 16 stores it full
        assert ("block.to_q.lokr_w2" in weights) == (rank == 16)
    inputs = {"block.to_q": torch.randn(5, 320), "block.proj_in": torch.randn(2, 320, 3, 3)}
    for path, x in inputs.items():
        layer = network.get_submodule(path)
        base = layer.get_base_layer()
        weight = comfy_style_weight(base.weight.detach(), layer_tensors(weights, path)).float()
        with torch.no_grad():
            peft_output = layer(x)
            loaded = nn.functional.linear(x, weight, base.bias) if x.dim() == 2 else nn.functional.conv2d(x, weight, base.bias)
            change = (peft_output - base(x)).abs().max().item()
        assert change > 0.1, "the adapter should change the layer's output"
        # float32 rounding of peft's forward against the float64 reconstruction: outputs are O(1..10).
        torch.testing.assert_close(loaded, peft_output, rtol=1e-5, atol=1e-5 * change)
    injected.remove()


@pytest.mark.parametrize("adapter", ADAPTER_CHOICES)
def test_each_type_learns_and_its_file_gives_the_train_time_output(adapter):
    """Train on a tiny diffusers UNet, then rebuild its weights from the saved tensors the ComfyUI way."""
    unet, vae, alphas = tiny_models()
    denoiser = DiffusersUNetDenoiser(unet, alphas)
    probe = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    sigma = denoiser.training_sigmas[400].reshape(1)
    text = HashTextEncoder().encode(["sks square"])[0]
    with torch.no_grad():
        base_output = denoiser.denoise(probe, sigma, text)
    seen = {}

    def on_step(report):
        if report.step == report.total:
            with torch.no_grad():
                seen["train_time"] = denoiser.denoise(probe, sigma, text)

    paths: dict[str, str] = {}

    def key_name(path: str) -> str:
        paths["lora_unet_" + path.replace(".", "_")] = path
        return "lora_unet_" + path.replace(".", "_")

    result = train_lora(denoiser, HashTextEncoder(), DiffusersLatentCodec(vae, 1.0), SyntheticData(),
                        LoRAConfig(rank=4, alpha=4, adapter=adapter), TrainingConfig(steps=8, learning_rate=1e-2),
                        key_namer=key_name, on_step=on_step)
    # The factor peft starts at zero has moved, so the file holds a real update.
    zero_at_start = {"lora": "lora_up.weight", "dora": "lora_up.weight", "loha": "hada_w2_b", "lokr": "lokr_w1"}
    moved = [k for k in result.weights if k.endswith(zero_at_start[adapter]) and result.weights[k].abs().max() > 0]
    assert len(moved) == len(paths) > 0
    assert all(k.split(".", 1)[0] in paths for k in result.weights)

    fresh, _, _ = tiny_models()
    with torch.no_grad():
        for stem, path in paths.items():
            layer = fresh.get_submodule(path)
            layer.weight.copy_(comfy_style_weight(layer.weight, layer_tensors(result.weights, stem)).float())
        loaded = DiffusersUNetDenoiser(fresh, alphas).denoise(probe, sigma, text)
    change = (seen["train_time"] - base_output).abs().max().item()
    assert change > 1e-3, f"{adapter} changed the output by only {change}"
    torch.testing.assert_close(loaded, seen["train_time"], rtol=1e-4, atol=1e-3 * change)


def test_rslora_is_saved_as_an_alpha_every_loader_applies():
    config = LoRAConfig(rank=16, alpha=4.0, adapter="loha", rslora=True)
    network = nn.Module()
    network.block = SpatialTransformer()
    injected = inject_adapter(network, config, seed=0)
    weights = extract_weights(injected, lambda path: path)
    # alpha' / rank = alpha / sqrt(rank)
    assert float(weights["block.to_q.alpha"]) == pytest.approx(4.0 * math.sqrt(16))
    injected.remove()


@pytest.mark.parametrize(
    "adapter, module, algo",
    [("lora", "networks.lora", None), ("loha", "lycoris.kohya", "loha"), ("lokr", "lycoris.kohya", "lokr"),
     ("dora", "lycoris.kohya", "lora")],
)
def test_metadata_names_the_network_as_kohya_and_lycoris_do(adapter, module, algo):
    meta = network_metadata(LoRAConfig(adapter=adapter))
    assert meta["ss_network_module"] == module
    args = json.loads(meta["ss_network_args"])
    assert args.get("algo") == algo
    assert (args.get("dora_wd") == "True") == (adapter == "dora")


def test_unknown_adapter_type_and_dropout_without_support_are_refused_by_name():
    with pytest.raises(ValueError, match="adapter type must be one of lora, loha, lokr, dora"):
        LoRAConfig(adapter="lycoris")
    for adapter in ("loha", "lokr"):
        with pytest.raises(ValueError, match=f"lora dropout 0.1 cannot be used with the {adapter} adapter type"):
            LoRAConfig(adapter=adapter, dropout=0.1)
    LoRAConfig(adapter="dora", dropout=0.1)


def test_resuming_with_another_adapter_type_is_refused(tmp_path):
    from trainer_core.training.checkpoints import CheckpointPolicy

    unet, vae, alphas = tiny_models()

    def run(adapter, steps, resume=None):
        return train_lora(
            DiffusersUNetDenoiser(unet, alphas), HashTextEncoder(), DiffusersLatentCodec(vae, 1.0), SyntheticData(),
            LoRAConfig(rank=4, alpha=4, adapter=adapter), TrainingConfig(steps=steps),
            checkpoints=CheckpointPolicy(tmp_path, "run", every=2), resume_from=resume,
        )

    run("loha", 2)
    with pytest.raises(TrainingError, match="set adapter type to loha"):
        run("lokr", 4, resume=tmp_path / "run.lora_lab_state")
    assert run("loha", 4, resume=tmp_path / "run.lora_lab_state").steps == 4
