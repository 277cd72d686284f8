"""The toy's training pieces: recipe, the autoencoder and UNet loops, the scenes encoded for the UNet,
and a sampler for checking them.

Used by tools/pretrain_toy.py, which runs the phases and writes the results. Nothing here imports
ComfyUI: the modules it trains are ComfyUI's own (built by the caller), the noise schedule comes in
as ComfyUI's ``sigmas``.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tools.tiny_models import TAESD_SD1_SCALE
from tools.toy_scenes import Scene, draw_scene, random_scene


@dataclass(frozen=True)
class PretrainRecipe:
    seed: int = 0
    text_encoder_seed: int = 0
    autoencoder_crop_steps: int = 500  # batches of 32×32 crops
    autoencoder_full_steps: int = 100  # then batches of whole 64×64 scenes
    autoencoder_batch: int = 16
    autoencoder_lr: float = 1e-3
    latent_noise: float = 0.1  # added to the encoder's output before decoding, in its units
    latent_penalty: float = 1e-3  # keeps each latent channel centred and small
    scenes: int = 6000  # encoded once for the UNet phase (50 per caption)
    unet_steps: int = 2400
    unet_batch: int = 32
    unet_lr: float = 5e-4
    warmup_steps: int = 50
    caption_dropout: float = 0.1  # share of captions replaced by the empty prompt
    # Share of captions given a made-up leading word ("qavo, a red circle ..."), drawn from
    # prefixed_variants encodings per caption, so a trigger word does not derail the base.
    caption_prefix_share: float = 0.3
    prefixed_variants: int = 3
    # t = 1000·u^power: 1 is uniform; 0.5 gives density ∝ t, more of the high-noise steps where
    # a picture's colours and layout are decided (what the toy learns last).
    timestep_power: float = 0.6
    ema_decay: float = 0.995
    eval_samples: int = 24
    eval_steps: int = 20
    eval_cfg: float = 5.0


# Continuing an earlier run's UNet (``--init-from``), keeping its VAE.
CONTINUE_RECIPE = replace(PretrainRecipe(), unet_steps=1500, unet_lr=3e-4, timestep_power=0.5)

QUICK_RECIPE = replace(
    PretrainRecipe(),
    autoencoder_crop_steps=20,
    autoencoder_full_steps=5,
    autoencoder_batch=8,
    scenes=256,
    unet_steps=30,
    unet_batch=8,
    prefixed_variants=1,
    warmup_steps=5,
    eval_samples=4,
    eval_steps=6,
)


@dataclass
class EncodedCaptions:
    """Phase 1's text side: every caption the UNet trains on and every evaluation prompt, encoded once."""

    captions: list[str]
    prefixed: list[str]  # each caption behind a made-up leading word
    variant_ids: torch.Tensor  # [caption, variant] -> row of ``contexts`` of its prefixed encodings
    contexts: torch.Tensor  # captions, then prefixed, then the empty prompt
    empty_id: int
    prompts: list[tuple[str, str, str]]  # (shape, colour, background) of each evaluation prompt
    prompt_texts: list[str]
    held_out: torch.Tensor  # the evaluation prompts behind the held-out leading word


@dataclass
class EncodedScenes:
    """Phase 2's output for the UNet: scenes as the latents it sees, and the VAE statistics measured."""

    latents: torch.Tensor
    caption_ids: torch.Tensor
    raw_mean: float
    raw_std: float
    probe_mse: float


@dataclass
class Evaluation:
    """Phase 4: the sampled pictures and, per picture, whether the prompt's colours came out."""

    images: np.ndarray
    samples: list[dict[str, Any]]
    passed: int
    passed_with_held_out_prefix: int


class Log:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:7.1f}s] {message}", flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def reset_parameters_(module: torch.nn.Module) -> None:
    """Torch's default initialisation (ComfyUI's layers skip it: a loader fills them)."""
    for layer in module.modules():
        for kind in (torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm, torch.nn.LayerNorm):
            if isinstance(layer, kind):
                kind.reset_parameters(layer)
                break


def zero_output_layers_(unet: torch.nn.Module) -> None:
    """Zero the last layer of every residual branch and of the UNet, as latent diffusion does: each
    block starts as the identity and the first prediction is 0."""
    with torch.no_grad():
        for name, layer in unet.named_modules():
            if name.endswith("out_layers.3") or name.endswith("proj_out") or name == "out.2":
                for parameter in layer.parameters():
                    parameter.zero_()


def draw_batch(rng: np.random.Generator, count: int) -> tuple[torch.Tensor, list[Scene]]:
    scenes = [random_scene(rng) for _ in range(count)]
    pixels = np.stack([draw_scene(scene, rng) for scene in scenes])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255.0), scenes


def encode_captions(clip: Any, captions: list[str]) -> torch.Tensor:
    """[len(captions), 77, 768] conditioning, computed as ``CLIPTextEncode`` computes it."""
    contexts = []
    with torch.no_grad():
        for caption in captions:
            conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(caption))
            contexts.append(conditioning[0][0][0].float().clone())
    return torch.stack(contexts)


def mean_pairwise_cosine(contexts: torch.Tensor) -> float:
    flat = F.normalize(contexts.flatten(1), dim=1)
    similarity = flat @ flat.T
    count = len(flat)
    return float((similarity.sum() - similarity.diagonal().sum()) / (count * (count - 1)))


def cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


class LossProgress:
    """A training loop's losses, averaged over every ``every`` steps (and the last), each mean logged
    with the pace so far and the time left; the thread count is re-chosen at each log line."""

    def __init__(self, name: str, measure: str, digits: int, every: int, total: int, log: Log) -> None:
        self.name, self.measure, self.digits = name, measure, digits
        self.every, self.total, self.log = every, total, log
        self.means: list[float] = []
        self.window: list[float] = []
        self.tick = time.monotonic()

    def add(self, step: int, loss: float) -> None:
        self.window.append(loss)
        if (step + 1) % self.every == 0 or step + 1 == self.total:
            adapt_threads()
            self.means.append(float(np.mean(self.window)))
            self.window = []
            rate = (time.monotonic() - self.tick) / (step + 1)
            self.log(
                f"{self.name} {step + 1}/{self.total} {self.measure} {self.means[-1]:.{self.digits}f} "
                f"({rate:.2f} s/step, {rate * (self.total - step - 1) / 60:.1f} min left)"
            )


def train_autoencoder(vae: Any, recipe: PretrainRecipe, rng: np.random.Generator, log: Log) -> list[float]:
    parameters = list(vae.taesd_encoder.parameters()) + list(vae.taesd_decoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=recipe.autoencoder_lr, weight_decay=0.0)
    total = recipe.autoencoder_crop_steps + recipe.autoencoder_full_steps
    progress = LossProgress("autoencoder", "mse", 5, every=20, total=total, log=log)
    for step in range(total):
        for group in optimizer.param_groups:
            group["lr"] = recipe.autoencoder_lr * cosine_lr(step, total, recipe.warmup_steps)
        images, _ = draw_batch(rng, recipe.autoencoder_batch)
        if step < recipe.autoencoder_crop_steps:
            # Crops aligned to the 8-pixel latent grid, one offset per picture.
            offsets = rng.integers(0, 5, size=(len(images), 2)) * 8
            images = torch.stack(
                [im[:, y : y + 32, x : x + 32] for im, (y, x) in zip(images, offsets, strict=True)]
            )
        images = images.contiguous(memory_format=torch.channels_last)
        latents = vae.taesd_encoder(images)
        decoded = vae.taesd_decoder(latents + recipe.latent_noise * torch.randn_like(latents))
        reconstruction = F.mse_loss(decoded, images)
        penalty = latents.mean(dim=(0, 2, 3)).pow(2).sum() + 0.1 * latents.pow(2).mean()
        loss = reconstruction + recipe.latent_penalty * penalty
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        progress.add(step, reconstruction.item())
    return progress.means


def train_unet(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    caption_ids: torch.Tensor,
    contexts: torch.Tensor,
    empty_id: int,
    variant_ids: torch.Tensor,
    sigmas: torch.Tensor,
    recipe: PretrainRecipe,
    generator: torch.Generator,
    log: Log,
) -> tuple[list[torch.Tensor], list[float]]:
    parameters = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=recipe.unet_lr, weight_decay=0.01)
    ema = [p.detach().clone() for p in parameters]
    progress = LossProgress("unet", "loss", 4, every=25, total=recipe.unet_steps, log=log)
    for step in range(recipe.unet_steps):
        for group in optimizer.param_groups:
            group["lr"] = recipe.unet_lr * cosine_lr(step, recipe.unet_steps, recipe.warmup_steps)
        index = torch.randint(0, len(latents), (recipe.unet_batch,), generator=generator)
        clean = latents[index]
        ids = caption_ids[index].clone()
        if variant_ids.shape[1]:
            prefixed = torch.rand(len(ids), generator=generator) < recipe.caption_prefix_share
            which = torch.randint(0, variant_ids.shape[1], (len(ids),), generator=generator)
            ids = torch.where(prefixed, variant_ids[ids, which], ids)
        ids[torch.rand(len(ids), generator=generator) < recipe.caption_dropout] = empty_id
        uniform = torch.rand(len(ids), generator=generator)
        timesteps = (uniform**recipe.timestep_power * len(sigmas)).long().clamp(max=len(sigmas) - 1)
        sigma = sigmas[timesteps].view(-1, 1, 1, 1)
        noise = torch.randn(clean.shape, generator=generator)
        # ComfyUI's EPS model input: x / sqrt(sigma² + 1) with x = clean + sigma·noise.
        model_input = (clean + sigma * noise) / (sigma**2 + 1).sqrt()
        prediction = unet(model_input, timesteps=timesteps.float(), context=contexts[ids])
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        decay = min(recipe.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for average, parameter in zip(ema, parameters, strict=True):
                average.mul_(decay).add_(parameter.detach(), alpha=1 - decay)
        progress.add(step, loss.item())
    return ema, progress.means


@torch.no_grad()
def encode_scenes(
    vae: Any, recipe: PretrainRecipe, rng: np.random.Generator, captions: list[str], set_scale_and_shift: bool
) -> EncodedScenes:
    """Round the VAE to what ComfyUI will load from the fp16 file, measure its encoder (and, for a new
    VAE, set ``vae_scale``/``vae_shift`` so the UNet sees unit-variance latents), then encode the
    UNet's scenes once."""
    for parameter in vae.parameters():
        parameter.copy_(parameter.half().float())
    probe, _ = draw_batch(rng, 512)
    raw = torch.cat([vae.taesd_encoder(chunk) for chunk in probe.split(64)])
    mean, std = float(raw.mean()), float(raw.std())
    if set_scale_and_shift:
        # ComfyUI: latent = encoder(x)/vae_scale + vae_shift; the UNet sees 0.18215·latent.
        vae.vae_scale.fill_(TAESD_SD1_SCALE * std)
        vae.vae_shift.fill_(-mean / (TAESD_SD1_SCALE * std))
    reconstruction = F.mse_loss(vae.taesd_decoder(raw[:256]), probe[:256]).item()
    scenes_rng = np.random.default_rng(recipe.seed + 1)
    latent_batches, caption_batches = [], []
    caption_index = {caption: i for i, caption in enumerate(captions)}
    for start in range(0, recipe.scenes, 64):
        images, scenes = draw_batch(scenes_rng, min(64, recipe.scenes - start))
        encoded = vae.taesd_encoder(images.contiguous(memory_format=torch.channels_last))
        latent_batches.append(TAESD_SD1_SCALE * (encoded / vae.vae_scale + vae.vae_shift))
        caption_batches.append(torch.tensor([caption_index[s.caption] for s in scenes]))
    return EncodedScenes(
        latents=torch.cat(latent_batches).contiguous(),
        caption_ids=torch.cat(caption_batches),
        raw_mean=mean,
        raw_std=std,
        probe_mse=reconstruction,
    )


@torch.no_grad()
def sample(
    unet: torch.nn.Module,
    vae: Any,
    model_sampling: Any,
    sigmas: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    cfg: float,
    seeds: list[int],
) -> np.ndarray:
    """Euler with cfg on ComfyUI's "normal" schedule, decoded as ComfyUI decodes; uint8 (N, 64, 64, 3)."""
    noise = torch.stack([torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in seeds])
    x = noise * sigmas[0]
    for sigma, next_sigma in zip(sigmas[:-1], sigmas[1:], strict=True):
        model_input = (x / (sigma**2 + 1).sqrt()).repeat(2, 1, 1, 1)
        timestep = model_sampling.timestep(sigma).float().expand(len(model_input))
        eps_cond, eps_uncond = unet(model_input, timesteps=timestep, context=torch.cat([cond, uncond])).chunk(
            2
        )
        eps = eps_uncond + cfg * (eps_cond - eps_uncond)
        x = x + eps * (next_sigma - sigma)  # Euler step: dx/dsigma = (x - denoised) / sigma = eps
    latent = x / TAESD_SD1_SCALE  # the SD15 latent format's process_out
    images = vae.decode(latent).add(1).div(2).clamp(0, 1)
    return (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


_ADAPTIVE_THREADS = False


def set_adaptive_threads(enabled: bool) -> None:
    global _ADAPTIVE_THREADS
    _ADAPTIVE_THREADS = enabled
    adapt_threads()


def adapt_threads() -> None:
    """All cores while the machine is otherwise idle, one thread when others are busy: two
    threads fighting over a shared core measured 3× slower here than one thread alone."""
    if not _ADAPTIVE_THREADS:
        return
    cores = os.cpu_count() or 1
    others = os.getloadavg()[0] - torch.get_num_threads()
    torch.set_num_threads(cores if others < 0.5 else 1)
