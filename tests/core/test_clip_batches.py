"""Clips in the training loop's data path, without ComfyUI: batches hold one frame count, a video VAE
encodes each clip whole (or an image model's each clip's first frame), and the latent cache keeps one entry
per clip window. The dataset is the contract's stand-in (tests/helpers/clip_data.py)."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from clip_data import StandInClips, clip_item  # noqa: E402

from trainer_core.training.encoding import TextCache, encode_latents  # noqa: E402
from trainer_core.training.encoding_cache import EncodingCache, encode_dataset  # noqa: E402
from trainer_core.training.epochs import batches  # noqa: E402


class VideoCodec:
    """A video VAE's shape rules (T = 1 + (F-1)/4, 1/8 size, 4 channels): latents are the pixels pooled,
    so a latent shows which frames it was given. Records the frame count of each call."""

    video_vae = True

    def __init__(self, trains_clips: bool):
        self.trains_clips = trains_clips
        self.calls: list[int] = []

    def encode(self, images):  # never called for a video VAE: images would become one clip's frames
        raise AssertionError("a video VAE must encode one clip at a time")

    def encode_clip(self, frames):
        self.calls.append(frames.shape[0])
        count = 1 + (frames.shape[0] - 1) // 4
        kept = frames[:: 4][:count] if frames.shape[0] > 1 else frames
        pooled = torch.nn.functional.avg_pool2d(kept.permute(0, 3, 1, 2), 8)  # [T, 3, h, w]
        return torch.cat([pooled, pooled[:, :1]], dim=1).permute(1, 0, 2, 3)[None]  # [1, 4, T, h, w]


def mixed_data():
    """Images (1 frame), 5-frame and 9-frame clips, all in one 32 px bucket, plus 5-frame clips at 48x32."""
    items = [clip_item(i, frames) for i, frames in enumerate([1, 1, 1, 5, 5, 5, 9, 9, 9])]
    items += [clip_item(9 + i, 5, size=(48, 32)) for i in range(3)]
    return StandInClips(items)


def test_batches_hold_one_frame_count_and_one_size():
    data = mixed_data()
    seen = set()
    for batch in itertools.islice(batches(data, batch_size=3, seed=0), 40):
        shapes = {(data.items[i].bucket, data.items[i].frames) for i in batch}
        assert len(shapes) == 1, shapes
        seen.add(len(batch))
    assert seen == {3}  # three of each shape: full batches, never mixed


def test_a_video_vae_encodes_each_clip_whole_and_an_image_model_its_first_frame():
    data = mixed_data()
    codec = VideoCodec(trains_clips=True)
    latents = encode_latents(data, codec)
    assert codec.calls == [item.frames for item in data.items]  # one clip per call, all its frames
    assert [tuple(latent.shape) for latent in latents[:7]] == [(4, 1, 4, 4)] * 3 + [(4, 2, 4, 4)] * 3 + [(4, 3, 4, 4)]
    # The second latent frame of a 5-frame clip is its fifth frame's (the square has moved).
    assert not torch.equal(latents[3][:, 0], latents[3][:, 1])

    image_model = VideoCodec(trains_clips=False)
    firsts = encode_latents(data, image_model)
    assert image_model.calls == [1] * len(data.items)
    for latent, clip in zip(firsts, latents, strict=True):
        torch.testing.assert_close(latent[:, 0], clip[:, 0])  # the first frame, as the clip's first latent frame


class KeyedText:
    def encode(self, captions):
        return [{"cross_attn": torch.zeros(1, 2, 4)} for _ in captions]


def test_the_latent_cache_keeps_one_entry_per_window_and_reads_it_back(tmp_path):
    """Two windows of one source (other frame indices) are two entries; a second run reads both back
    (nothing encoded) and gets the same latents; the same window for an image model is another entry."""
    windows = StandInClips([clip_item(0, 5, start=0), clip_item(0, 5, start=3)])
    assert windows.pixel_key(windows.items[0]) == windows.pixel_key(windows.items[1])  # same file, same pixels key
    cache = EncodingCache(tmp_path / "cache", latent_codec="video codec", text_encoder="text")
    first, counts = encode_dataset(windows, VideoCodec(True), TextCache(KeyedText()), None, cache, 1)
    assert counts.latents_encoded == 2 and not torch.equal(first[0], first[1])
    codec = VideoCodec(True)
    again, counts = encode_dataset(windows, codec, TextCache(KeyedText()), None, cache, 1)
    assert counts.latents_cached == 2 and codec.calls == []
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    _, counts = encode_dataset(windows, VideoCodec(False), TextCache(KeyedText()), None, cache, 1)
    assert counts.latents_encoded == 2
