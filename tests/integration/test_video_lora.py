"""Video LoRAs at the MODEL level: tiny Wan 2.1 and HunyuanVideo (ComfyUI's own model classes and VAEs,
built tiny in this process) trained on tiny generated clips through Train LoRA's own path.

The clips come from the contract's stand-in dataset (tests/helpers/clip_data.py); their frames go through the
family's own VAE (Wan 2.1's 3-D causal VAE, TAEHV for HunyuanVideo) and the model's latent scaling, the
conditioning is what ComfyUI's CLIPTextEncode returns for the family (``family_models.FakeClip``, with
HunyuanVideo's guidance as ComfyUI's model fills it). Each test says what a user would see.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from clip_data import StandInClips, clip_item  # noqa: E402
from comfy_inproc import load_pack  # noqa: E402
from family_models import FakeClip, family_patcher, family_vae, wan22_vae  # noqa: E402

pytestmark = pytest.mark.comfy

VIDEO = ("wan21", "wan22_14b", "hunyuan_video")  # Wan 2.2 14B T2V is Wan 2.1's architecture and VAE
# Wan 2.2 5B (TI2V) trains on clips through its own Wan 2.2 VAE, which ComfyUI builds only at its real size.
TRAINED = (*VIDEO, "wan22_5b")


def video_vae(family: str):
    return wan22_vae() if family == "wan22_5b" else family_vae(family)
FRAMES = 5  # 4k+1: two latent frames through Wan's and HunyuanVideo's VAEs
SIZE = (32, 32)


@pytest.fixture(scope="module")
def pack():
    return load_pack()


def clip_dataset(count=2, frames=FRAMES):
    return StandInClips([clip_item(i, frames, size=SIZE, stride=2) for i in range(count)])


def test_clips_encode_as_comfyuis_vae_encode_gives_them(pack):
    """A clip's latent is what VAEEncode gives for its frames, through the model's own latent scaling:
    5 frames -> 2 latent frames for Wan 2.1 (and its TAEHV for HunyuanVideo); an image is one frame."""
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.training.encoding import encode_latents

    for family in VIDEO:
        patcher, vae = family_patcher(family), family_vae(family)
        codec = bridge.ComfyLatentCodec(vae, patcher)
        assert codec.video_vae and codec.trains_clips
        data = StandInClips([clip_item(0, FRAMES, size=SIZE), clip_item(1, 1, size=SIZE)])
        clip_latent, image_latent = encode_latents(data, codec)
        frames = torch.from_numpy(data.load_frames(data.items[0]))
        expected = patcher.model.process_latent_in(vae.encode(frames).float())
        assert tuple(clip_latent.shape) == (16, 2, SIZE[1] // 8, SIZE[0] // 8), family
        torch.testing.assert_close(clip_latent, expected[0])
        assert tuple(image_latent.shape) == (16, 1, SIZE[1] // 8, SIZE[0] // 8), family
    # Qwen-Image, an image model on Wan 2.1's VAE: its images are encoded one at a time too (a batch of images
    # through that VAE would be one clip's frames), and a clip trains as its first frame.
    patcher, vae = family_patcher("qwen_image"), family_vae("qwen_image")
    codec = bridge.ComfyLatentCodec(vae, patcher)
    assert codec.video_vae and not codec.trains_clips
    data = StandInClips([clip_item(i, 1, size=SIZE) for i in range(3)] + [clip_item(3, FRAMES, size=SIZE)])
    latents = encode_latents(data, codec)
    assert [tuple(latent.shape) for latent in latents] == [(16, 1, SIZE[1] // 8, SIZE[0] // 8)] * 4
    for item, latent in zip(data.items, latents, strict=True):
        alone = patcher.model.process_latent_in(vae.encode(torch.from_numpy(data.load_image(item))[None]).float())
        torch.testing.assert_close(latent, alone[0])


def test_wan22_5b_clips_encode_through_its_own_wan22_vae(pack):
    """Wan 2.2 5B: 5 frames -> 2 latent frames of 48 channels at 1/16 of the size, what VAEEncode gives through
    its Wan 2.2 VAE and the model's latent scaling; an image is one latent frame."""
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.training.encoding import encode_latents

    patcher, vae = family_patcher("wan22_5b"), wan22_vae()
    codec = bridge.ComfyLatentCodec(vae, patcher)
    assert codec.video_vae and codec.trains_clips
    data = StandInClips([clip_item(0, FRAMES, size=SIZE), clip_item(1, 1, size=SIZE)])
    clip_latent, image_latent = encode_latents(data, codec)
    expected = patcher.model.process_latent_in(vae.encode(torch.from_numpy(data.load_frames(data.items[0]))).float())
    assert tuple(clip_latent.shape) == (48, 2, SIZE[1] // 16, SIZE[0] // 16)
    torch.testing.assert_close(clip_latent, expected[0])
    assert tuple(image_latent.shape) == (48, 1, SIZE[1] // 16, SIZE[0] // 16)


@pytest.mark.parametrize("family", TRAINED)
def test_a_video_lora_trains_on_clips_leaves_the_model_alone_and_loads_back_as_trained(pack, family, caplog):
    """On 5-frame clips: the loss on a fixed clip batch falls, the shared model's weights stay bit-identical,
    ComfyUI's LoraLoader places every key of the file (musubi-tuner's names for Wan), and the LoRA loaded on
    a fresh model gives the train-time output on a 5-D latent with two frames."""
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.training.encoding import encode_latents
    from lora_lab.trainer_core.training.losses import add_noise, diffusion_loss
    from lora_lab.trainer_core.training.step import denoise_in_text_groups


    patcher, vae = family_patcher(family), video_vae(family)
    network = patcher.model.diffusion_model
    parameters = {n: (p, p.clone()) for n, p in network.named_parameters()}
    denoiser = bridge.ComfyDenoiser(patcher.clone())
    encoder, codec, data = bridge.ComfyTextEncoder(FakeClip(family)), bridge.ComfyLatentCodec(vae, patcher), clip_dataset()

    x0 = torch.stack(encode_latents(data, codec))
    assert x0.ndim == 5 and x0.shape[2] == 2  # [B, C, T, h, w], T > 1
    texts = encoder.encode([item.caption for item in data.items])
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(x0.shape, generator=g)
    sigmas = denoiser.training_sigmas
    sigma = torch.stack([sigmas[len(sigmas) // 3], sigmas[2 * len(sigmas) // 3]])
    noisy = add_noise(x0, noise, sigma, denoiser.prediction)
    assert denoiser.prediction == "flow"

    def fixed_batch_loss():
        with torch.no_grad():
            estimate = denoise_in_text_groups(denoiser, noisy, sigma, texts)
            return diffusion_loss(estimate, x0, sigma, denoiser.prediction, 0.0).item()

    probe = (noisy[:1], sigma[:1], encoder.encode(["sks probe"])[0])
    with torch.no_grad():
        base_output = denoiser.denoise(*probe)
    result = train_and_check(bridge, (denoiser, encoder, codec, data), patcher, parameters, fixed_batch_loss, probe,
                             base_output, family, caplog)
    if family == "wan21":  # musubi-tuner's Wan names (lora_unet_blocks_0_self_attn_q...)
        assert "lora_unet_blocks_0_self_attn_q.lora_down.weight" in result.weights


def train_and_check(bridge, run: tuple, patcher, parameters: dict, fixed_batch_loss, probe: tuple, base_output,
                    family: str, caplog, steps: int = 20):
    """Train ``run`` (denoiser, text encoder, codec, data) for ``steps`` at rank 4, then check what a user would
    see: the loss on the fixed batch fell, the shared network's weights (``parameters``: name -> (param, copy))
    are bit-identical, and the LoRA loaded on a fresh ``family`` model gives the train-time output on ``probe``."""
    from lora_lab.trainer_core.adapters.config import LoRAConfig
    from lora_lab.trainer_core.training.config import TrainingConfig
    from lora_lab.trainer_core.training.loop import train_lora

    from tests.integration.test_model_families import assert_loads_back_as_trained

    denoiser = run[0]
    loss_before, seen = fixed_batch_loss(), {}

    def on_step(report):
        if report.step == steps:  # the adapter is live: this is the train-time LoRA
            seen["loss"] = fixed_batch_loss()
            with torch.no_grad():
                seen["train_time"] = denoiser.denoise(*probe)

    result = train_lora(*run, LoRAConfig(rank=4, alpha=4),
                        TrainingConfig(steps=steps, batch_size=2, learning_rate=1e-2, mixed_precision="fp32"),
                        key_namer=bridge.kohya_key_namer(patcher), on_step=on_step)
    assert len(result.losses) == steps and all(np.isfinite(result.losses))
    assert seen["loss"] < loss_before, (loss_before, seen["loss"])
    for name, param in patcher.model.diffusion_model.named_parameters():
        assert param is parameters[name][0] and torch.equal(param, parameters[name][1]), name
    assert_loads_back_as_trained(bridge, family_patcher(family), result.weights, probe, seen["train_time"],
                                 base_output, caplog)
    return result


def test_masked_loss_on_clips_without_masks_just_works(pack):
    """A clip dataset with no masks trains with masked_loss off as before; with it on, the user is told no
    item has a mask (the same message as for images), not a shape error from a 5-D latent."""
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.adapters.config import LoRAConfig
    from lora_lab.trainer_core.training.config import TrainingConfig
    from lora_lab.trainer_core.training.loop import TrainingError, train_lora

    patcher = family_patcher("wan21")
    args = (bridge.ComfyDenoiser(patcher.clone()), bridge.ComfyTextEncoder(FakeClip("wan21")),
            bridge.ComfyLatentCodec(family_vae("wan21"), patcher), clip_dataset(count=1), LoRAConfig(rank=2, alpha=2))
    result = train_lora(*args, TrainingConfig(steps=2, mixed_precision="fp32"), key_namer=bridge.kohya_key_namer(patcher))
    assert len(result.losses) == 2
    with pytest.raises(TrainingError, match="no image has a mask"):
        train_lora(*args, TrainingConfig(steps=2, mixed_precision="fp32", masked_loss=True),
                   key_namer=bridge.kohya_key_namer(patcher))


def test_an_image_model_given_clips_warns_and_trains_on_their_first_frames(pack, caplog):
    """SDXL given a clip dataset: Train LoRA's warning names the clips and what happens (each window trains
    as its first frame), and training runs on image latents."""
    from lora_lab.nodes import bridge
    from lora_lab.nodes.latent_codec import clips_on_image_model_note
    from lora_lab.trainer_core.adapters.config import LoRAConfig
    from lora_lab.trainer_core.training.config import TrainingConfig
    from lora_lab.trainer_core.training.encoding import encode_latents
    from lora_lab.trainer_core.training.loop import train_lora

    patcher, vae, data = family_patcher("sdxl"), family_vae("sdxl"), clip_dataset()
    codec = bridge.ComfyLatentCodec(vae, patcher)
    note = clips_on_image_model_note(data, codec)
    assert note is not None and "2 clip(s)" in note and "first sampled frame" in note and "SDXL" in note
    latents = encode_latents(data, codec)
    first = torch.from_numpy(data.load_image(data.items[0]))[None]
    torch.testing.assert_close(latents[0], codec.encode(first)[0])  # the first frame, as an image
    result = train_lora(bridge.ComfyDenoiser(patcher.clone()), bridge.ComfyTextEncoder(FakeClip("sdxl")), codec, data,
                        LoRAConfig(rank=2, alpha=2), TrainingConfig(steps=3, mixed_precision="fp32"),
                        key_namer=bridge.kohya_key_namer(patcher))
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))
    # A video model trains the same clips as clips: no warning; an image dataset on it trains one-frame clips.
    wan = bridge.ComfyLatentCodec(family_vae("wan21"), family_patcher("wan21"))
    assert clips_on_image_model_note(data, wan) is None
    assert clips_on_image_model_note(StandInClips([clip_item(0, 1, size=SIZE)]), codec) is None


def test_only_hunyuan_video_i2v_is_refused_naming_why_and_what_to_use(pack):
    """HunyuanVideo I2V (its input adds a first-frame latent) is refused before training, naming the class,
    why, and the text-to-video model to train instead; Wan 2.1 I2V, Wan 2.1 T2V and Wan 2.2 5B train."""
    import comfy.supported_models
    from lora_lab.nodes.families import training_refusal
    from tiny_families import FAMILIES

    assert training_refusal(family_patcher("wan21").model) is None
    assert training_refusal(family_patcher("wan22_5b").model) is None
    assert training_refusal(family_patcher("wan21_i2v").model) is None
    assert training_refusal(family_patcher("wan22_i2v").model) is None
    i2v_class = comfy.supported_models.HunyuanVideoI2V
    config = dict(i2v_class.unet_config, **dict(FAMILIES["hunyuan_video"].config, in_channels=33))
    message = training_refusal(i2v_class(config).get_model({}))
    assert message is not None and "HunyuanVideoI2V" in message and "image-to-video" in message
    assert "text-to-video" in message and "Wan 2.1" in message


@pytest.mark.parametrize("model_class_name, kind", [
    ("WAN21_Vace", "control video (VACE)"), ("WAN21_Camera", "camera-controlled"), ("WAN21_HuMo", "audio-driven"),
    ("WAN22_Animate", "pose-driven"), ("WAN22_S2V", "audio-driven"),
])
def test_wan_variants_with_control_inputs_are_refused_by_class(pack, model_class_name, kind):
    """Wan variants whose input adds control streams Train LoRA does not build are refused, naming them."""
    import comfy.model_base
    from lora_lab.nodes.families import training_refusal

    message = training_refusal(object.__new__(getattr(comfy.model_base, model_class_name)))
    assert message is not None and f"ComfyUI's {model_class_name}" in message and kind in message


def test_a_wan_with_a_control_video_input_is_refused_and_i2v_inputs_are_not(pack):
    """Wan Fun Control loads as a plain WAN21 whose input adds 32 control channels: training it would feed those
    zeros, so it is refused before training; the 36-channel I2V input (start image + mask) is not."""
    import comfy.model_patcher
    import comfy.supported_models
    from lora_lab.nodes.families import training_refusal
    from tiny_families import FAMILIES

    config_class = comfy.supported_models.WAN21_T2V
    config = dict(config_class.unet_config, **dict(FAMILIES["wan21"].config, in_dim=48))
    with torch.inference_mode():
        model = config_class(config).get_model({})
    message = training_refusal(model)
    assert message is not None and "ComfyUI's WAN21" in message and "32 channels of control" in message
    assert training_refusal(family_patcher("wan22_i2v").model) is None
