"""The encoding cache without ComfyUI: what is encoded again, what is read back, and what survives damage.

A real dataset folder (PNGs and captions, scanned by ``load_dataset``), a latent codec and a text encoder
that count what they encode, and the cache in a temporary folder.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.core.test_training_core import HashTextEncoder, tiny_models
from tools.synthetic_dataset import make_shapes_dataset
from trainer_core.adapters.config import LoRAConfig
from trainer_core.data.dataset import DatasetOptions, load_dataset
from trainer_core.models.diffusers_backend import DiffusersLatentCodec, DiffusersUNetDenoiser
from trainer_core.training.config import TrainingConfig
from trainer_core.training.encoding import TextCache
from trainer_core.training.encoding_cache import (
    EncodingCache,
    encode_dataset,
    entry_path,
    read_entry,
    trim,
    write_entry,
)
from trainer_core.training.loop import train_lora

COUNT = 5


class CountingCodec:
    """Latents from pixels (a 4x downscale, four channels), counting the images it encodes."""

    def __init__(self, gain: float = 1.0):
        self.gain = gain
        self.images = 0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.images += images.shape[0]
        pooled = torch.nn.functional.avg_pool2d(images.permute(0, 3, 1, 2), 4)
        return torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1) * self.gain


class CountingText(HashTextEncoder):
    def __init__(self):
        super().__init__()
        self.captions = 0

    def encode(self, captions):
        self.captions += len(captions)
        return super().encode(captions)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = make_shapes_dataset(tmp_path / "data", count=COUNT, size=64)
    for index in range(COUNT):
        (path / f"{index:03d}.txt").write_text(f"sks, a ring, picture {index}")
    return path


def encode(folder: Path, cache: EncodingCache | None, codec=None, text=None, clip_skip: int = 1):
    data = load_dataset(folder, DatasetOptions(resolution=64, bucket_step=64))
    codec, text = codec or CountingCodec(), text or CountingText()
    texts = TextCache(text)
    latents, counts = encode_dataset(data, codec, texts, [i.caption for i in data.items], cache, clip_skip)
    return latents, {c: texts.cache[c] for c in texts.cache}, counts, codec, text


def test_an_unchanged_dataset_is_read_back_exactly_and_nothing_is_encoded(folder, tmp_path):
    cache = EncodingCache(tmp_path / "cache", "vae A", "clip A")
    cold_latents, cold_texts, cold, _, _ = encode(folder, cache)
    assert (cold.latents_encoded, cold.latents_cached, cold.texts_encoded, cold.texts_cached) == (COUNT, 0, COUNT, 0)
    latents, texts, warm, codec, text = encode(folder, cache)
    assert (warm.latents_encoded, warm.latents_cached, warm.texts_encoded, warm.texts_cached) == (0, COUNT, 0, COUNT)
    assert codec.images == 0 and text.captions == 0
    assert all(torch.equal(a, b) for a, b in zip(latents, cold_latents, strict=True))
    assert texts.keys() == cold_texts.keys()
    assert all(torch.equal(texts[c]["cross_attn"], cold_texts[c]["cross_attn"]) for c in texts)
    assert warm.summary() == f"latents {COUNT} cached, 0 encoded; captions {COUNT} cached, 0 encoded"


def test_a_changed_image_caption_vae_or_clip_skip_is_encoded_again_and_only_that(folder, tmp_path):
    cache = EncodingCache(tmp_path / "cache", "vae A", "clip A")
    encode(folder, cache)
    with Image.open(folder / "002.png") as image:
        changed = image.convert("RGB")
    changed.putpixel((3, 3), (1, 2, 3))
    changed.save(folder / "002.png")
    counts = encode(folder, cache)[2]
    assert (counts.latents_encoded, counts.texts_encoded) == (1, 0)
    (folder / "004.txt").write_text("sks, a ring, a new caption")
    counts = encode(folder, cache)[2]
    assert (counts.latents_encoded, counts.texts_encoded, counts.texts_cached) == (0, 1, COUNT - 1)
    latents, _, counts, _, _ = encode(folder, replace(cache, latent_codec="vae B"), codec=CountingCodec(gain=2.0))
    assert (counts.latents_encoded, counts.texts_encoded) == (COUNT, 0)
    back_to_a = encode(folder, cache)
    assert back_to_a[2].latents_encoded == 0  # the first VAE's entries are still there
    assert torch.equal(latents[0], 2 * back_to_a[0][0])
    counts = encode(folder, cache, clip_skip=2)[2]
    assert (counts.latents_encoded, counts.texts_encoded) == (0, COUNT)


def test_the_same_image_in_another_bucket_or_crop_is_another_entry(folder, tmp_path):
    cache = EncodingCache(tmp_path / "cache", "vae A", "clip A")
    encode(folder, cache)
    data = load_dataset(folder, DatasetOptions(resolution=64, bucket_step=64, center_crop=False))
    counts = encode_dataset(data, CountingCodec(), TextCache(CountingText()), None, cache, 1)[1]
    assert counts.latents_encoded == COUNT and counts.texts_every_step


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped byte", "empty"])
def test_a_damaged_entry_is_ignored_encoded_again_and_replaced(folder, tmp_path, damage, caplog):
    cache = EncodingCache(tmp_path / "cache", "vae A", "clip A")
    reference = encode(folder, cache)[0]
    entries = sorted((tmp_path / "cache" / "latents").rglob("*.safetensors"))
    assert len(entries) == COUNT
    victim = entries[0]
    data = victim.read_bytes()
    damaged = {"garbage": os.urandom(len(data)), "truncated": data[: len(data) - 7], "empty": b"",
               "flipped byte": data[:-1] + bytes([data[-1] ^ 0x40])}[damage]
    victim.write_bytes(damaged)
    latents, _, counts, _, _ = encode(folder, cache)
    assert (counts.latents_encoded, counts.latents_cached) == (1, COUNT - 1)
    assert all(torch.equal(a, b) for a, b in zip(latents, reference, strict=True))
    assert str(victim) in caplog.text and "cannot be read" in caplog.text
    assert read_entry(victim) is not None  # replaced by a good one
    assert encode(folder, cache)[2].latents_encoded == 0


def test_two_writers_of_one_entry_leave_one_whole_file(tmp_path):
    path = entry_path(tmp_path, "latents", "ab" * 32)
    tensors = [{"latent": torch.full((4, 64, 64), float(i))} for i in range(2)]
    seen: list[float] = []
    stop = threading.Event()

    def write(which: int) -> None:
        for _ in range(40):
            assert write_entry(path, tensors[which])

    def read() -> None:
        while not stop.is_set():
            entry = read_entry(path)
            if entry is not None:
                assert entry["latent"].unique().numel() == 1  # never a mix of two writes
                seen.append(float(entry["latent"][0, 0, 0]))

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(i,)) for i in (0, 1)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    reader.join()
    assert read_entry(path)["latent"].unique().numel() == 1
    assert seen and set(seen) <= {0.0, 1.0}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_the_cap_deletes_the_entries_used_longest_ago_and_never_this_runs(tmp_path):
    paths = [entry_path(tmp_path, "latents", f"{i:02d}" * 32) for i in range(6)]
    for age, path in enumerate(paths):
        write_entry(path, {"latent": torch.zeros(256)})  # about 1 KiB each
        os.utime(path, (1_000_000 + age, 1_000_000 + age))
    read_entry(paths[0])  # used just now: the newest
    size = paths[0].stat().st_size
    deleted = trim(tmp_path, max_bytes=3 * size, keep={paths[1]})
    assert deleted == 3
    assert [p.exists() for p in paths] == [True, True, False, False, False, True]


def test_training_with_the_cache_gives_the_same_lora_as_without(folder, tmp_path):
    unet, vae, alphas = tiny_models()
    data = load_dataset(folder, DatasetOptions(resolution=64, bucket_step=64))

    def run(cache: EncodingCache | None):
        result = train_lora(DiffusersUNetDenoiser(unet, alphas), CountingText(), DiffusersLatentCodec(vae, 1.0), data,
                            LoRAConfig(rank=4, alpha=4), TrainingConfig(steps=6, learning_rate=2e-3, seed=3),
                            caption_for=data.caption_for, encoding_cache=cache)
        return dict(result.weights), result.encoding

    cache = EncodingCache(tmp_path / "cache", "tiny vae", "hash text")
    without, counts_off = run(None)
    run(cache)
    with_cache, counts_on = run(cache)
    assert not counts_off.cache_on and counts_off.latents_encoded == COUNT
    assert (counts_on.latents_encoded, counts_on.texts_encoded) == (0, 0)
    assert without.keys() == with_cache.keys()
    assert all(torch.equal(without[k], with_cache[k]) for k in without)


def test_a_cache_folder_that_cannot_be_written_is_said_once_and_training_data_is_complete(folder, tmp_path, caplog):
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("a file where the cache folder should be")
    latents, texts, counts, _, _ = encode(folder, EncodingCache(blocked, "vae A", "clip A"))
    assert len(latents) == COUNT and len(texts) == COUNT and counts.latents_encoded == COUNT
    assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1
    assert str(blocked) in caplog.text and "could not be written" in counts.summary()
