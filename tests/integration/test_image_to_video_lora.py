"""Image-to-video LoRAs at the MODEL level: tiny Wan 2.1 I2V (ComfyUI's WAN21_I2V, with its CLIP-vision image
embedding) and Wan 2.2 I2V 14B (a WAN21 whose input reads the start image but no CLIP vision), ComfyUI's own
model classes, Wan 2.1's VAE and ComfyUI's own ClipVisionModel, all built tiny in this process.

Each clip trains with its own first frame as the start image, conditioned as ComfyUI's WanImageToVideo
conditions a start image at inference (the VAE encoding of the frame padded with grey to the clip's length,
the mask that keeps it, CLIP vision's features for Wan 2.1 I2V). Each test says what a user would see."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from clip_data import StandInClips, clip_item  # noqa: E402
from comfy_inproc import load_pack  # noqa: E402
from family_models import FakeClip, family_patcher, family_vae  # noqa: E402
from tiny_clip_vision import tiny_clip_vision  # noqa: E402

pytestmark = pytest.mark.comfy

FRAMES = 5  # two latent frames through Wan's VAE
SIZE = (32, 32)


@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.fixture(scope="module")
def clip_vision(pack, tmp_path_factory):
    return tiny_clip_vision(tmp_path_factory.mktemp("models"), hidden_size=1280)  # clip_vision_h's width


def clip_dataset(count=2, frames=FRAMES):
    return StandInClips([clip_item(i, frames, size=SIZE, stride=2) for i in range(count)])


def inference_conditioning(vae, clip_vision, start, length, caption_embedding):
    """What a WanImageToVideo graph hands the sampler for ``start`` [1, H, W, 3]: the caption's conditioning
    with ComfyUI's own node's concat latent and mask, and CLIPVisionEncode's output (crop "center")."""
    from comfy_extras.nodes_wan import WanImageToVideo

    vision = None if clip_vision is None else clip_vision.encode_image(start, crop=True)
    conditioning = [[caption_embedding["cross_attn"], {}]]
    positive = WanImageToVideo.execute(conditioning, conditioning, vae, start.shape[2], start.shape[1], length, 1,
                                       start_image=start, clip_vision_output=vision)[0]
    values = dict(positive[0][1])
    return {"cross_attn": positive[0][0], **values}


@pytest.mark.parametrize("family", ["wan21_i2v", "wan22_i2v"])
def test_an_i2v_lora_trains_on_first_frames_leaves_the_model_alone_and_loads_back_as_trained(
        pack, family, clip_vision, caplog):
    """On 5-frame clips, each with its own first frame as the start image: the loss on a fixed batch falls,
    the shared model's weights stay bit-identical, LoraLoader places every key, and the LoRA loaded on a fresh
    model gives the train-time output on a two-frame latent conditioned by WanImageToVideo."""
    from lora_lab.nodes import bridge
    from lora_lab.nodes.image_to_video import first_frame_codec
    from lora_lab.trainer_core.training.encoding import encode_latents
    from lora_lab.trainer_core.training.first_frame import encode_first_frames, with_first_frames
    from lora_lab.trainer_core.training.losses import add_noise, diffusion_loss
    from lora_lab.trainer_core.training.step import denoise_in_text_groups

    from tests.integration.test_video_lora import train_and_check

    vision = clip_vision if family == "wan21_i2v" else None
    patcher, vae = family_patcher(family), family_vae("wan21")
    network = patcher.model.diffusion_model
    parameters = {n: (p, p.clone()) for n, p in network.named_parameters()}
    denoiser = bridge.ComfyDenoiser(patcher.clone())
    encoder, data = bridge.ComfyTextEncoder(FakeClip("wan21")), clip_dataset()
    codec = first_frame_codec(vae, patcher, vision)

    x0 = torch.stack(encode_latents(data, codec))
    assert x0.shape[2] == 2
    texts = with_first_frames(encoder.encode([item.caption for item in data.items]),
                              encode_first_frames(data, codec), [0, 1])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    sigmas = denoiser.training_sigmas
    sigma = torch.stack([sigmas[len(sigmas) // 3], sigmas[2 * len(sigmas) // 3]])
    noisy = add_noise(x0, noise, sigma, denoiser.prediction)

    def fixed_batch_loss():
        with torch.no_grad():
            estimate = denoise_in_text_groups(denoiser, noisy, sigma, texts)
            return diffusion_loss(estimate, x0, sigma, denoiser.prediction, 0.0).item()

    start = torch.from_numpy(data.load_image(data.items[1]))[None]
    probe_text = inference_conditioning(vae, vision, start, FRAMES, encoder.encode(["sks probe"])[0])
    probe = (noisy[1:], sigma[1:], probe_text)
    with torch.no_grad():
        base_output = denoiser.denoise(*probe)
    train_and_check(bridge, (denoiser, encoder, codec, data), patcher, parameters, fixed_batch_loss, probe,
                    base_output, family, caplog)


class EditedFrames(StandInClips):
    """The stand-in clips with one source frame of every clip painted over."""

    def __init__(self, items, painted: int):
        super().__init__(items)
        self.painted = painted

    def load_frames(self, item):
        frames = super().load_frames(item).copy()
        frames[self.painted] = 0.7
        return frames

    def load_image(self, item):
        return self.load_frames(item)[0]


def test_the_model_sees_each_clips_own_first_frame_and_clip_vision_features(pack, clip_vision):
    """During training the Wan 2.1 I2V network's input carries, after the 16 noisy channels, the mask that
    keeps the first latent frame and the VAE encoding of the item's own first frame padded with 0.5 grey (as
    WanImageToVideo pads a start image), and its clip_fea is CLIP vision's features of that frame. An image
    (one frame) is its own start image. Only the first frame decides the cache key."""
    from lora_lab.nodes import bridge
    from lora_lab.nodes.image_to_video import first_frame_codec
    from lora_lab.trainer_core.adapters.config import LoRAConfig
    from lora_lab.trainer_core.training.config import TrainingConfig
    from lora_lab.trainer_core.training.first_frame import first_frame_key
    from lora_lab.trainer_core.training.loop import train_lora

    patcher, vae = family_patcher("wan21_i2v"), family_vae("wan21")
    codec = first_frame_codec(vae, patcher, clip_vision)
    for frames in (FRAMES, 1):
        data = StandInClips([clip_item(0, frames, size=SIZE, stride=2)])
        denoiser = bridge.ComfyDenoiser(patcher.clone())
        seen = []
        hook = denoiser.network.register_forward_pre_hook(
            lambda module, args, kwargs, seen=seen: seen.append((args[0].clone(), kwargs["clip_fea"].clone())),
            with_kwargs=True)
        try:
            train_lora(denoiser, bridge.ComfyTextEncoder(FakeClip("wan21")), codec, data, LoRAConfig(rank=2, alpha=2),
                       TrainingConfig(steps=1, mixed_precision="fp32"), key_namer=bridge.kohya_key_namer(patcher))
        finally:
            hook.remove()
        (model_input, clip_fea), = seen
        first = torch.from_numpy(data.load_image(data.items[0]))[None]
        padded = torch.full((frames, SIZE[1], SIZE[0], 3), 0.5)
        padded[0] = first[0]
        expected = patcher.model.process_latent_in(vae.encode(padded).float())
        assert model_input.shape[1] == 36 and model_input.shape[2] == expected.shape[2] == 1 + (frames - 1) // 4
        torch.testing.assert_close(model_input[:, 20:], expected)
        mask = model_input[:, 16:20]
        assert bool((mask[:, :, 0] == 1).all()) and bool((mask[:, :, 1:] == 0).all())
        torch.testing.assert_close(clip_fea, clip_vision.encode_image(first, crop=True).penultimate_hidden_states)

    items = [clip_item(0, FRAMES, size=SIZE, stride=2)]
    key = first_frame_key(StandInClips(items), items[0], codec, "vae")
    assert first_frame_key(EditedFrames(items, painted=0), items[0], codec, "vae") != key
    assert first_frame_key(EditedFrames(items, painted=2), items[0], codec, "vae") == key
    longer = dataclasses.replace(items[0], frames=FRAMES + 4)
    assert first_frame_key(StandInClips(items), longer, codec, "vae") != key  # another length, another padding


def test_wan21_i2v_without_clip_vision_says_what_to_connect(pack):
    """Wan 2.1 I2V reads CLIP-vision features: without a CLIP vision model Train LoRA names its clip_vision
    input and the model to load; Wan 2.2 I2V 14B needs none."""
    from lora_lab.nodes.image_to_video import first_frame_codec

    with pytest.raises(ValueError, match="clip_vision") as error:
        first_frame_codec(family_vae("wan21"), family_patcher("wan21_i2v"), None)
    assert "Load CLIP Vision" in str(error.value) and "clip_vision_h" in str(error.value)
    assert first_frame_codec(family_vae("wan21"), family_patcher("wan22_i2v"), None).first_frame_conditioning
    assert not getattr(first_frame_codec(family_vae("wan21"), family_patcher("wan21"), None),
                       "first_frame_conditioning", False)


@pytest.mark.parametrize("family", ["wan21_i2v", "wan22_i2v"])
def test_without_a_start_image_the_grids_refuse_an_i2v_model_naming_what_to_do(pack, family):
    """The sweep and stack nodes render text-to-video cells unless given a start image: on an I2V model
    without one they stop before rendering and name the sweep's start_image and the WanImageToVideo +
    LoraLoader + KSampler graph; a text-to-video Wan, or an I2V model with a start image, passes."""
    from lora_lab.nodes import grid_render

    sampling = grid_render.Sampling(negative="", seed=0, steps=1, cfg=1.0, sampler_name="euler",
                                    scheduler="simple", width=32, height=32, frames=5)
    with pytest.raises(ValueError, match="image-to-video") as error:
        grid_render.fit_cell_size(family_patcher(family), family_vae("wan21"), sampling)
    assert "start_image" in str(error.value) and "WanImageToVideo" in str(error.value)
    assert "LoraLoader + KSampler" in str(error.value)
    fitted, _ = grid_render.fit_cell_size(family_patcher("wan21"), family_vae("wan21"), sampling)
    assert (fitted.width, fitted.height) == (32, 32)
    with_start = dataclasses.replace(sampling, start_image=torch.zeros(1, 32, 32, 3))
    assert grid_render.fit_cell_size(family_patcher(family), family_vae("wan21"), with_start)[0] == with_start


def test_first_frames_are_encoded_once_and_again_only_when_the_first_frame_changes(pack, clip_vision, tmp_path):
    """With the encoding cache on, a second run reads every item's first-frame conditioning back (nothing is
    encoded, the tensors are the same); painting over a clip's first frame encodes it anew, painting over a
    later frame does not (two clips whose first frames become the same share one entry). The console summary
    says how many were cached."""
    from lora_lab.nodes.image_to_video import first_frame_codec
    from lora_lab.trainer_core.training.encoding_cache import EncodingCache, EncodingCounts
    from lora_lab.trainer_core.training.first_frame import encode_first_frames

    codec = first_frame_codec(family_vae("wan21"), family_patcher("wan21_i2v"), clip_vision)
    encoded = []
    encode = codec.encode_first_frame
    codec.encode_first_frame = lambda first, length: encoded.append(length) or encode(first, length)
    cache = EncodingCache(tmp_path / "cache", "vae identity", "clip identity")
    items = [clip_item(i, FRAMES, size=SIZE, stride=2) for i in range(2)]

    def run(data):
        counts = EncodingCounts(cache_on=True)
        return encode_first_frames(data, codec, cache, counts), counts.summary()

    first, summary = run(StandInClips(items))
    assert len(encoded) == 2 and "first frames (image-to-video) 0 cached, 2 encoded" in summary
    again, summary = run(StandInClips(items))
    assert len(encoded) == 2 and "2 cached, 0 encoded" in summary
    for before, after in zip(first, again, strict=True):
        assert before.keys() == after.keys() == {"concat_latent_image", "concat_mask", "clip_vision_penultimate"}
        for key in before:
            torch.testing.assert_close(before[key], after[key])
    run(EditedFrames(items, painted=2))
    assert len(encoded) == 2
    run(EditedFrames(items, painted=0))  # both first frames now the same grey: one new entry, shared
    assert len(encoded) == 3


def test_held_out_clips_are_validated_with_their_own_first_frames(pack):
    """With validation on, every forward pass of an I2V run, the held-out loss's included, carries a start
    image (the mask keeping the first latent frame), and the held-out loss is measured."""
    from lora_lab.nodes import bridge
    from lora_lab.nodes.image_to_video import first_frame_codec
    from lora_lab.trainer_core.adapters.config import LoRAConfig
    from lora_lab.trainer_core.training.config import TrainingConfig
    from lora_lab.trainer_core.training.loop import train_lora
    from lora_lab.trainer_core.training.validation import ValidationConfig

    patcher = family_patcher("wan22_i2v")
    denoiser = bridge.ComfyDenoiser(patcher.clone())
    masks = []
    hook = denoiser.network.register_forward_pre_hook(lambda module, args: masks.append(args[0][:, 16:20].clone()))
    held_out = StandInClips([clip_item(5, FRAMES, size=SIZE, stride=2)])
    try:
        result = train_lora(denoiser, bridge.ComfyTextEncoder(FakeClip("wan21")),
                            first_frame_codec(family_vae("wan21"), patcher), clip_dataset(), LoRAConfig(rank=2, alpha=2),
                            TrainingConfig(steps=2, mixed_precision="fp32"), key_namer=bridge.kohya_key_namer(patcher),
                            validation_data=held_out, validation=ValidationConfig(share=0.1, every=1))
    finally:
        hook.remove()
    assert sorted(result.validation_losses) == [1, 2]
    assert len(masks) > 2  # two training steps and the held-out passes
    for mask in masks:
        assert bool((mask[:, :, 0] == 1).all()) and bool((mask[:, :, 1:] == 0).all())
