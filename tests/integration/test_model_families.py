"""Every image-model family ComfyUI loads trains through the same path as SD1.5, at the MODEL level.

ComfyUI's detection pins these families to sizes far too large for a CPU test, so these build ComfyUI's
own model classes from tiny configs (one table: ``tests/helpers/tiny_families.py``) inside this process.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from comfy_inproc import load_pack, tiny_model_patcher  # noqa: E402
from tiny_families import FAMILIES  # noqa: E402

pytestmark = pytest.mark.comfy

LATENT_CHANNELS = {"sdxl": 4, "flux": 16, "sd3": 16}


@dataclass(frozen=True)
class Item:
    caption: str
    repeats: int
    bucket: tuple[int, int]
    index: int


class Data:
    def __init__(self, count=4, size=64):
        self.items = tuple(Item(f"sks shape {i}", 1, (size, size), i) for i in range(count))

    def load_image(self, item):
        image = np.full((64, 64, 3), 0.1, np.float32)
        image[16 + item.index : 48, 16:48] = (0.9, 0.3, 0.2)
        return image


class FakeTextEncoder:
    """Conditioning shaped as the family's real text encoders return it (``tiny_families``), seeded by the
    caption. Without ``tokens``, a caption has as many tokens as words + 2 (so lengths differ), unless the
    family's encoder pads to a fixed length; an attention mask covers the caption's own tokens."""

    def __init__(self, family, tokens=None):
        self.family = FAMILIES[family]
        self.tokens = tokens

    def encode(self, captions):
        out = []
        for caption in captions:
            g = torch.Generator().manual_seed(sum(map(ord, caption)))
            used = len(caption.split()) + 2
            length = self.family.fixed_tokens or self.tokens or used
            embedding = {}
            for key, shape in self.family.text.items():
                shape = tuple(length if size == "T" else size for size in shape)
                if key.startswith("attention_mask"):
                    embedding[key] = (torch.arange(shape[-1]) < used).float().expand(1, *shape).clone()
                else:
                    embedding[key] = torch.randn((1, *shape), generator=g)
            out.append(embedding)
        return out


class FakeCodec:
    """Pixels to latents through a fixed random projection at 1/8 size."""

    def __init__(self, channels):
        self.projection = torch.randn(channels, 3, generator=torch.Generator().manual_seed(7))

    def encode(self, images):
        pooled = torch.nn.functional.avg_pool2d(images.permute(0, 3, 1, 2), 8)
        return torch.einsum("cd,bdhw->bchw", self.projection, pooled)



def assert_loads_back_as_trained(bridge, patcher, weights, probe, train_time, base_output, caplog) -> None:
    """Every key of ``weights`` maps onto the model through ComfyUI's own loader (none is left over), and
    the load-time output on ``probe`` (x, sigma, text) equals the train-time one, which the LoRA changed."""
    import comfy.lora
    import comfy.model_management
    import comfy.sd

    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    with caplog.at_level(logging.WARNING):
        patches = comfy.lora.load_lora(weights, key_map)
    assert "lora key not loaded" not in caplog.text
    # Every layer has an .alpha (kohya's tensor names) or a .lora_B.weight (peft's, which carry no alpha).
    layers = {key.rsplit(suffix, 1)[0] for key in weights for suffix in (".alpha", ".lora_B.weight") if key.endswith(suffix)}
    assert len(patches) == len(layers) > 0

    loaded, _ = comfy.sd.load_lora_for_models(patcher, None, weights, 1.0, 0.0)
    comfy.model_management.load_models_gpu([loaded])
    try:
        with torch.no_grad():
            load_time = bridge.ComfyDenoiser(loaded).denoise(*probe)
    finally:
        loaded.unpatch_model()
    change = (train_time - base_output).abs().max().item()
    assert change > 1e-4, "the LoRA changed nothing"
    torch.testing.assert_close(load_time, train_time, rtol=1e-4, atol=1e-5 + 1e-3 * change)

@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.mark.parametrize(
    "family, rslora, adapter",
    [("sdxl", False, "lora"), ("flux", False, "lora"), ("sdxl", True, "lora"), ("sdxl", False, "loha"),
     ("sdxl", True, "lokr"), ("flux", False, "dora"), ("flux", False, "lokr"),
     # SD3's file splits a LoRA on a fused qkv layer into diffusers' q, k, v; these do not split by rows
     ("sd3", False, "loha"), ("sd3", False, "dora")],
)
def test_family_trains_leaves_model_alone_and_loads_back_identically(pack, family, rslora, adapter, caplog):
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.adapters.config import LoRAConfig
    from lora_lab.trainer_core.training.config import TrainingConfig
    from lora_lab.trainer_core.training.loop import train_lora

    patcher = tiny_model_patcher(family)
    network = patcher.model.diffusion_model
    before = {n: (p, p.clone()) for n, p in network.named_parameters()}
    denoiser = bridge.ComfyDenoiser(patcher.clone())
    assert denoiser.prediction == ("eps" if family == "sdxl" else "flow")

    g = torch.Generator().manual_seed(3)
    probe_x = torch.randn(1, LATENT_CHANNELS[family], 8, 8, generator=g)
    probe_sigma = denoiser.training_sigmas[len(denoiser.training_sigmas) // 2].reshape(1)
    probe_text = FakeTextEncoder(family, tokens=16).encode(["probe"])[0]
    with torch.no_grad():
        base_output = denoiser.denoise(probe_x, probe_sigma, probe_text)
    steps = 30
    seen = {}

    def on_step(report):
        if report.step == steps:  # the adapter is live: this is the train-time LoRA
            with torch.no_grad():
                seen["train_time"] = denoiser.denoise(probe_x, probe_sigma, probe_text)

    result = train_lora(
        denoiser, FakeTextEncoder(family, tokens=16), FakeCodec(LATENT_CHANNELS[family]), Data(), LoRAConfig(rank=4, alpha=4, rslora=rslora, adapter=adapter),
        TrainingConfig(steps=steps, learning_rate=1e-2, mixed_precision="fp32"),
        key_namer=bridge.kohya_key_namer(patcher), on_step=on_step,
    )
    assert len(result.losses) == steps and all(np.isfinite(result.losses))

    # The shared network is exactly as it was.
    for name, param in network.named_parameters():
        assert param is before[name][0] and torch.equal(param, before[name][1]), name

    assert_loads_back_as_trained(bridge, patcher, result.weights, (probe_x, probe_sigma, probe_text), seen["train_time"],
                                 base_output, caplog)


class FamilyCodec:
    """Pixels to latents of the family's shape (channels, frame axis, size) through a fixed random projection."""

    def __init__(self, family):
        self.shape = FAMILIES[family].latent
        self.projection = torch.randn(self.shape[0], 3, generator=torch.Generator().manual_seed(7))

    def encode(self, images):
        pooled = torch.nn.functional.adaptive_avg_pool2d(images.permute(0, 3, 1, 2), self.shape[-2:])
        latents = torch.einsum("cd,bdhw->bchw", self.projection, pooled)
        return latents.unsqueeze(2) if len(self.shape) == 4 else latents


class CaptionsOfDifferentLengths(Data):
    def __init__(self):
        super().__init__(count=2)
        self.items = tuple(Item("sks shape" + " red" * (3 * i), 1, (64, 64), i) for i in range(2))


MATRIX_XFAIL: dict[str, str] = {}  # family -> why it is expected to fail (none today)


@pytest.mark.parametrize("family", [
    pytest.param(name, marks=pytest.mark.xfail(reason=MATRIX_XFAIL[name], strict=True)) if name in MATRIX_XFAIL
    else name for name in FAMILIES
])
def test_family_matrix_trains_at_batch_2_leaves_model_alone_and_loads_back_identically(pack, family, caplog):
    """Each family through Train LoRA's own path: two captions of different token lengths in one batch,
    a loss that falls on that fixed batch, the shared model untouched (parameters and buffers), and a
    file that ComfyUI's LoRA loader takes whole and that gives the train-time output."""
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.adapters.config import LoRAConfig
    from lora_lab.trainer_core.training.config import TrainingConfig
    from lora_lab.trainer_core.training.loop import train_lora
    from lora_lab.trainer_core.training.losses import add_noise, diffusion_loss
    from lora_lab.trainer_core.training.step import denoise_in_text_groups

    spec = FAMILIES[family]
    patcher = tiny_model_patcher(family)
    network = patcher.model.diffusion_model
    parameters = {n: (p, p.clone()) for n, p in network.named_parameters()}
    buffers = {n: b.clone() for n, b in network.named_buffers()}
    denoiser = bridge.ComfyDenoiser(patcher.clone())
    assert denoiser.prediction == spec.prediction

    data, encoder, codec = CaptionsOfDifferentLengths(), FakeTextEncoder(family), FamilyCodec(family)
    captions = [item.caption for item in data.items]
    if spec.fixed_tokens is None:
        assert len({t["cross_attn"].shape[1] for t in encoder.encode(captions)}) == 2
    x0 = codec.encode(torch.from_numpy(np.stack([data.load_image(item) for item in data.items])))
    texts = encoder.encode(captions)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(x0.shape, generator=g)
    sigmas = denoiser.training_sigmas
    sigma = torch.stack([sigmas[len(sigmas) // 3], sigmas[2 * len(sigmas) // 3]])
    noisy = add_noise(x0, noise, sigma, denoiser.prediction)

    def fixed_batch_loss():
        with torch.no_grad():
            return diffusion_loss(denoise_in_text_groups(denoiser, noisy, sigma, texts), x0, sigma, denoiser.prediction, 0.0).item()

    probe_text = encoder.encode(["probe"])[0]
    probe_x, probe_sigma = noisy[:1], sigma[:1]
    with torch.no_grad():
        base_output = denoiser.denoise(probe_x, probe_sigma, probe_text)
    loss_before = fixed_batch_loss()
    steps = 20
    seen = {}

    def on_step(report):
        if report.step == steps:  # the adapter is live: this is the train-time LoRA
            seen["loss"] = fixed_batch_loss()
            with torch.no_grad():
                seen["train_time"] = denoiser.denoise(probe_x, probe_sigma, probe_text)

    result = train_lora(
        denoiser, encoder, codec, data, LoRAConfig(rank=4, alpha=4),
        TrainingConfig(steps=steps, batch_size=2, learning_rate=1e-2, mixed_precision="fp32"),
        key_namer=bridge.kohya_key_namer(patcher), on_step=on_step,
    )
    assert len(result.losses) == steps and all(np.isfinite(result.losses))
    assert seen["loss"] < loss_before, (loss_before, seen["loss"])

    for name, param in network.named_parameters():
        assert param is parameters[name][0] and torch.equal(param, parameters[name][1]), name
    for name, buffer in network.named_buffers():
        assert torch.equal(buffer, buffers[name]), name

    assert_loads_back_as_trained(bridge, patcher, result.weights, (probe_x, probe_sigma, probe_text), seen["train_time"],
                                 base_output, caplog)


def test_sdxl_text_encoder_lora_keys_are_kohyas_te1_and_te2_and_comfyui_loads_every_one(pack, caplog):
    """The key namer on SDXL's real text-encoder layout (CLIP-L 12 layers, CLIP-G 32; built on the meta
    device, so no weights are made), checked against ComfyUI's own loader."""
    import comfy.lora
    import comfy.sd
    import comfy.sdxl_clip
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.training.text_encoder import find_text_encoder_targets

    clip = comfy.sd.CLIP(no_init=True)
    clip.cond_stage_model = comfy.sdxl_clip.SDXLClipModel(device="meta", dtype=torch.float16)
    targets = find_text_encoder_targets(clip.cond_stage_model)
    assert len(targets) == 6 * (12 + 32)
    name = bridge.clip_key_namer(clip)
    stems = {target: name(target) for target in targets}
    for target, stem in stems.items():
        encoder, _, rest = target.partition(".transformer.")
        prefix = {"clip_l": "lora_te1_", "clip_g": "lora_te2_"}[encoder]
        assert stem == prefix + rest.replace(".", "_"), (target, stem)

    weights = {}
    for stem in stems.values():
        weights[f"{stem}.lora_down.weight"] = torch.zeros(1, 4)
        weights[f"{stem}.lora_up.weight"] = torch.zeros(4, 1)
        weights[f"{stem}.alpha"] = torch.tensor(1.0)
    key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})
    with caplog.at_level(logging.WARNING):
        patches = comfy.lora.load_lora(weights, key_map)
    assert "lora key not loaded" not in caplog.text
    assert set(patches) == {f"{target}.weight" for target in targets}


def tiny_sdxl_clip(seed: int = 0):
    """ComfyUI's own SDXL CLIP (CLIP-L + CLIP-G at their real widths, 3 layers each, so conditioning fits
    the tiny SDXL UNet) with seeded weights made as a loader makes them (inference tensors)."""
    import types

    import comfy.sd
    import comfy.sdxl_clip

    small = {"num_hidden_layers": 3, "intermediate_size": 256}
    target = types.SimpleNamespace(params={}, clip=comfy.sdxl_clip.SDXLClipModel, tokenizer=comfy.sdxl_clip.SDXLTokenizer)
    clip = comfy.sd.CLIP(target, model_options={"dtype": torch.float32, "clip_l_model_config": small,
                                                "clip_g_model_config": small})
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        for name, param in clip.cond_stage_model.named_parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * (1.0 / param.shape[1] ** 0.5))
            elif "bias" in name:
                param.zero_()
            elif "norm" in name:
                param.fill_(1.0)
    return clip


def test_sdxl_text_encoder_lora_trains_through_both_encoders_and_loads_back_identically(pack, caplog):
    import comfy.sd
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.adapters.config import LoRAConfig
    from lora_lab.trainer_core.training.config import TrainingConfig
    from lora_lab.trainer_core.training.loop import train_lora

    clip = tiny_sdxl_clip()
    network = clip.cond_stage_model
    before = {n: (p, p.clone()) for n, p in network.named_parameters()}
    encoder = bridge.ComfyTextEncoder(clip)
    with torch.no_grad():
        base = encoder.encode(["probe"])[0]
    seen = {}

    def on_step(report):
        if report.step == report.total:  # the text encoder's LoRA is live: this is train-time conditioning
            with torch.no_grad():
                seen["train_time"] = encoder.encode(["probe"])[0]

    patcher = tiny_model_patcher("sdxl")
    with caplog.at_level(logging.INFO):
        result = train_lora(
            bridge.ComfyDenoiser(patcher.clone()), encoder, FakeCodec(4), Data(), LoRAConfig(rank=4, alpha=4),
            TrainingConfig(steps=6, learning_rate=1e-3, text_encoder_lr=1e-2, mixed_precision="fp32"),
            key_namer=bridge.kohya_key_namer(patcher), text_key_namer=bridge.clip_key_namer(clip), on_step=on_step,
        )
    # ComfyUI's CLIP layers add in place; copies of the text encoder's activations alone must cover that,
    # without the whole-step fallback that would double the UNet's activation memory too.
    assert "modifies activations in place" not in caplog.text
    caplog.clear()
    stems = {k.split(".")[0] for k in result.weights if k.startswith("lora_te")}
    assert {s[: len("lora_te1_")] for s in stems} == {"lora_te1_", "lora_te2_"} and len(stems) == 2 * 3 * 6

    for name, param in network.named_parameters():
        assert param is before[name][0] and torch.equal(param, before[name][1]), name
    with torch.no_grad():
        after = encoder.encode(["probe"])[0]
    assert all(torch.equal(after[k], base[k]) for k in base)

    with caplog.at_level(logging.WARNING):
        _, loaded_clip = comfy.sd.load_lora_for_models(patcher, clip, result.weights, 1.0, 1.0)
    assert "lora key not loaded" not in caplog.text
    with torch.no_grad():
        load_time = bridge.ComfyTextEncoder(loaded_clip).encode(["probe"])[0]
    for key in ("cross_attn", "pooled_output"):  # CLIP-L and CLIP-G features, CLIP-G's pooled vector
        change = (seen["train_time"][key] - base[key]).abs().max().item()
        assert change > 1e-3, f"the text-encoder LoRA did not change {key}"
        torch.testing.assert_close(load_time[key], seen["train_time"][key], rtol=1e-4, atol=1e-5 + 1e-3 * change)


def test_clip_skip_is_recorded_as_encoding_really_used_it_and_bounded_by_the_clip(pack):
    import comfy.sd
    import comfy.sdxl_clip
    from lora_lab.nodes import bridge

    clip = comfy.sd.CLIP(no_init=True)
    clip.cond_stage_model = comfy.sdxl_clip.SDXLClipModel(device="meta", dtype=torch.float16)
    clip.layer_idx = None
    assert bridge.effective_clip_skip(clip, 1) == 1 and bridge.effective_clip_skip(clip, 3) == 3
    clip.layer_idx = -2  # a CLIPSetLastLayer -2 before TrainLoRA, which keeps it at clip_skip 1
    assert bridge.effective_clip_skip(clip, 1) == 2 and bridge.effective_clip_skip(clip, 3) == 3
    assert bridge.clip_with_skip(clip, 1) is clip
    with pytest.raises(ValueError, match="clip_skip 13 is more than this CLIP's 12 layers"):
        bridge.clip_with_skip(clip, 13)  # CLIP-L has 12 (CLIP-G 32)


def test_the_families_train_lora_calls_tested_are_the_ones_this_matrix_trains(pack):
    """Train LoRA's console says "untested" for a family outside ``families.TESTED_FAMILIES``: that list must be
    exactly SD1.5's class (BaseModel, trained through the canvas) and the classes of the matrix's passing families."""
    from lora_lab.nodes.families import TESTED_FAMILIES

    trained = {type(tiny_model_patcher(name).model).__name__ for name in FAMILIES if name not in MATRIX_XFAIL}
    assert set(TESTED_FAMILIES) == trained | {"BaseModel"}
