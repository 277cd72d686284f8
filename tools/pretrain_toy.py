"""Pretrain the toy base model on CPU: the tiny SD1.5-format checkpoint taught to draw coloured shapes.

    python tools/pretrain_toy.py            # the shipped toy, into models/toy/ (one run: 37 min on 2 idle cores)
    python tools/pretrain_toy.py --quick    # a smoke test of every phase (~1-2 min) into .cache/toy_quick/
    python tools/pretrain_toy.py --init-from models/toy/toy_sd15_unet_vae.safetensors --out-dir ...
                                            # keep a run's VAE and continue its UNet

The UNet's timesteps lean towards high noise (t = 1000·u^0.6), where a picture's colours and layout
are decided: with uniform timesteps, 1,500 steps put the background colour right in only a third of
samples. Some captions start with a made-up word ("qavo, a red circle ..."), so a prompt that starts
with a LoRA's trigger word still draws the rest; the check samples each prompt also behind the
held-out word "sks, ". Measured times are in the recipe JSON.

Phases, all seeded:
1. the frozen random text encoder is drawn (tools/toy_model.py) and loaded with a fresh UNet and
   VAE through ComfyUI's own checkpoint loader; every distinct caption (and the empty prompt) is
   encoded once, exactly as ``CLIPTextEncode`` does, and cached;
2. the TAESD-layout VAE is trained as an autoencoder on generated scenes (32×32 crops first: the
   convolutions do not care, and it is 4× cheaper; then whole 64×64 scenes), with noise on the
   latents so the decoder forgives a sampler's small errors; ``vae_scale``/``vae_shift`` are then
   set from the encoder's statistics so the UNet sees unit-variance latents;
3. the UNet learns the eps objective on ComfyUI's SD15 noise schedule, with some captions
   dropped to the empty prompt (for cfg), zero-initialised output layers and EMA weights;
4. the EMA UNet samples a few prompts (Euler, cfg) and the centre/border colours are scored.

Writes ``toy_sd15_unet_vae.safetensors`` (UNet + VAE, fp16) and ``toy_sd15_recipe.json`` (recipe,
seeds, losses, timings, text encoder checksum, sample scores). Results are seeded but not
bit-identical across thread counts or torch builds (reductions change order).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tools.tiny_models import TAESD_SD1_SCALE, TINY_SD15_UNET_CONFIG  # noqa: E402
from tools.toy_model import (  # noqa: E402
    TEXT_ENCODER_GENERATOR,
    TOY_DIR,
    build_text_encoder_state,
    file_sha256,
    text_encoder_checksum,
    text_encoder_layout,
)
from tools.toy_scenes import (  # noqa: E402
    CAPTION_TEMPLATE,
    HELD_OUT_PREFIX,
    SIDE_RANGE,
    TOY_COLOURS,
    TOY_SHAPES,
    all_captions,
    picture_colours,
    prefix_words,
    random_scene,
)
from tools.toy_training import (  # noqa: E402
    CONTINUE_RECIPE,
    QUICK_RECIPE,
    Log,
    PretrainRecipe,
    draw_batch,
    encode_captions,
    mean_pairwise_cosine,
    reset_parameters_,
    sample,
    set_adaptive_threads,
    train_autoencoder,
    train_unet,
    zero_output_layers_,
)

WEIGHTS_NAME = "toy_sd15_unet_vae.safetensors"
RECIPE_NAME = "toy_sd15_recipe.json"
RECIPE_VERSION = 1


def import_comfy() -> Any:
    """ComfyUI's modules on CPU, in this process (the script is its own process)."""
    from tools.setup_comfyui import comfyui_root

    root = str(comfyui_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.ldm.modules.diffusionmodules.openaimodel
    import comfy.model_management
    import comfy.ops
    import comfy.samplers
    import comfy.sd
    import comfy.taesd.taesd

    return comfy


def evaluation_prompts(count: int, seed: int) -> list[tuple[str, str, str]]:
    rng = np.random.default_rng(seed)
    return [(s.shape, s.colour, s.background) for s in (random_scene(rng) for _ in range(count))]


def load_previous_stage(weights: Path, unet: torch.nn.Module, vae: Any) -> dict[str, Any]:
    """Load a first stage's UNet and VAE (vae_scale/vae_shift included); return its recipe."""
    from safetensors.torch import load_file

    recipe_path = weights.with_name(RECIPE_NAME)
    if not recipe_path.is_file():
        raise FileNotFoundError(
            f"{recipe_path} is missing: --init-from needs the recipe written next to the weights"
        )
    state = load_file(str(weights))
    for module, prefix in ((unet, "model.diffusion_model."), (vae, "first_stage_model.")):
        module.load_state_dict(
            {k[len(prefix) :]: v.float() for k, v in state.items() if k.startswith(prefix)}
        )
    return json.loads(recipe_path.read_text())


def pretrain(
    recipe: PretrainRecipe, out_dir: Path, work_dir: Path, log: Log, init_from: Path | None = None
) -> dict[str, Any]:
    """Pretrain from scratch, or (``init_from``: an earlier output's weights) keep its VAE and
    continue its UNet."""
    comfy = import_comfy()
    from safetensors.torch import save_file

    timings: dict[str, float] = {}
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    mark = time.monotonic()

    text_encoder = build_text_encoder_state(recipe.text_encoder_seed)
    checksum = text_encoder_checksum(text_encoder)
    unet = comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel(
        **TINY_SD15_UNET_CONFIG, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init
    )
    reset_parameters_(unet)
    zero_output_layers_(unet)
    vae = comfy.taesd.taesd.TAESD(latent_channels=4)
    reset_parameters_(vae)
    vae = vae.to(memory_format=torch.channels_last)

    # Through ComfyUI's own loader, so captions are encoded by the very CLIP object a graph gets.
    bootstrap = work_dir / "bootstrap.safetensors"
    work_dir.mkdir(parents=True, exist_ok=True)
    save_file(dict(text_encoder, **checkpoint_state(unet, vae)), str(bootstrap))
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(bootstrap), output_vae=False)
    detected = type(model.model.model_config).__name__
    if detected != "SD15":
        raise RuntimeError(f"ComfyUI detects the toy as {detected}, not SD15")
    loaded_keys = {k.removeprefix("clip_l.") for k in clip.cond_stage_model.state_dict()}
    expected_keys = {key for key, _ in text_encoder_layout()} | {"logit_scale"}
    if loaded_keys != expected_keys:
        raise RuntimeError(
            f"text encoder layout differs from ComfyUI's: {sorted(loaded_keys ^ expected_keys)[:5]}"
        )
    model_sampling = model.get_model_object("model_sampling")
    sigmas = model_sampling.sigmas.float().clone()
    captions = all_captions()
    words = prefix_words(4 * len(captions), recipe.seed + 4)
    word_rng = np.random.default_rng(recipe.seed + 5)
    prefixed = [
        f"{words[int(i)]}, {caption}"
        for caption in captions
        for i in word_rng.choice(len(words), size=recipe.prefixed_variants, replace=False)
    ]
    variant_ids = (len(captions) + torch.arange(len(prefixed))).view(len(captions), recipe.prefixed_variants)
    prompts = evaluation_prompts(recipe.eval_samples, recipe.seed + 3)
    prompt_texts = [CAPTION_TEMPLATE.format(shape=s, colour=c, background=b) for s, c, b in prompts]
    held_out = encode_captions(clip, [f"{HELD_OUT_PREFIX}, {text}" for text in prompt_texts])
    contexts = encode_captions(clip, captions + prefixed + [""])
    empty_id = len(contexts) - 1
    del model, clip
    bootstrap.unlink()
    timings["text_encoder_and_captions_s"] = time.monotonic() - mark
    log(
        f"{len(captions)} captions, {len(prefixed)} with a made-up leading word, + empty encoded; mean pairwise cosine {mean_pairwise_cosine(contexts):.4f}"
    )

    mark = time.monotonic()
    previous: dict[str, Any] | None = None
    if init_from is None:
        autoencoder_losses = train_autoencoder(vae, recipe, rng, log)
    else:
        previous = load_previous_stage(init_from, unet, vae)
        autoencoder_losses = []
        log(f"continuing the UNet and keeping the VAE of {init_from}")
    timings["autoencoder_s"] = time.monotonic() - mark

    mark = time.monotonic()
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.copy_(parameter.half().float())  # what ComfyUI will load from the fp16 file
        probe, _ = draw_batch(rng, 512)
        raw = torch.cat([vae.taesd_encoder(chunk) for chunk in probe.split(64)])
        mean, std = float(raw.mean()), float(raw.std())
        if previous is None:
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
        latents = torch.cat(latent_batches).contiguous()
        caption_ids = torch.cat(caption_batches)
    timings["encode_scenes_s"] = time.monotonic() - mark
    channel_std = [round(float(v), 3) for v in latents.std(dim=(0, 2, 3))]
    log(
        f"vae: raw latent mean {mean:.3f} std {std:.3f}; probe mse {reconstruction:.5f}; {len(latents)} scenes "
        f"encoded; UNet latent channel std {channel_std}"
    )

    mark = time.monotonic()
    generator = torch.Generator().manual_seed(recipe.seed + 2)
    ema, unet_losses = train_unet(
        unet, latents, caption_ids, contexts, empty_id, variant_ids, sigmas, recipe, generator, log
    )
    with torch.no_grad():
        for parameter, average in zip((p for p in unet.parameters() if p.requires_grad), ema, strict=True):
            parameter.copy_(average.half().float())
    timings["unet_s"] = time.monotonic() - mark

    mark = time.monotonic()
    caption_index = {caption: i for i, caption in enumerate(captions)}
    cond = torch.cat([contexts[[caption_index[text] for text in prompt_texts]], held_out])
    uncond = contexts[[empty_id] * len(cond)]
    eval_sigmas = comfy.samplers.calculate_sigmas(model_sampling, "normal", recipe.eval_steps).float()
    unet.eval()
    seeds = list(range(len(prompts))) * 2
    all_images = sample(unet, vae, model_sampling, eval_sigmas, cond, uncond, recipe.eval_cfg, seeds)
    images = all_images[: len(prompts)]
    results = []
    for index, image in enumerate(all_images):
        shape, colour, background = prompts[index % len(prompts)]
        seen = picture_colours(image)
        text = prompt_texts[index % len(prompts)]
        results.append(
            {
                "prompt": text if index < len(prompts) else f"{HELD_OUT_PREFIX}, {text}",
                "centre": seen.centre,
                "border": seen.border,
                "ok": seen.centre == colour and seen.border == background,
            }
        )
    passed = sum(r["ok"] for r in results[: len(prompts)])
    passed_prefixed = sum(r["ok"] for r in results[len(prompts) :])
    timings["evaluation_s"] = time.monotonic() - mark
    log(
        f"samples: {passed}/{len(prompts)} with the prompt's colour at the centre and background at the "
        f"border; {passed_prefixed}/{len(prompts)} with the held-out leading word '{HELD_OUT_PREFIX}, '"
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(
        np.concatenate(
            [
                np.concatenate(list(row), axis=1)
                for row in all_images.reshape(-1, min(8, len(all_images)), 64, 64, 3)
            ],
            axis=0,
        )
    ).save(out_dir / "toy_sd15_samples.png")
    weights = out_dir / WEIGHTS_NAME
    partial = weights.with_name(f".{weights.name}.partial")
    save_file(
        checkpoint_state(unet, vae),
        str(partial),
        metadata={
            "lora_lab.toy_model": json.dumps(
                {"recipe_version": RECIPE_VERSION, "text_encoder_sha256": checksum}
            )
        },
    )
    os.replace(partial, weights)
    timings["total_s"] = log.elapsed()
    report = {
        "recipe_version": RECIPE_VERSION,
        "recipe": asdict(recipe),
        "scenes": {
            "shapes": list(TOY_SHAPES),
            "colours": TOY_COLOURS,
            "caption_template": CAPTION_TEMPLATE,
            "side_range": list(SIDE_RANGE),
            "captions": len(captions),
            "prefixed_captions": len(prefixed),
            "prefix_words_example": sorted({p.split(",")[0] for p in prefixed})[:8],
        },
        "text_encoder": {
            "seed": recipe.text_encoder_seed,
            "generator": TEXT_ENCODER_GENERATOR,
            "sha256": checksum,
            "caption_mean_pairwise_cosine": mean_pairwise_cosine(contexts),
        },
        "vae": {
            "raw_latent_mean": mean,
            "raw_latent_std": std,
            "vae_scale": vae.vae_scale.item(),
            "vae_shift": vae.vae_shift.item(),
            "probe_mse": reconstruction,
            "unet_latent_channel_std": channel_std,
        },
        "losses": {
            "autoencoder_mse_every_20_steps": autoencoder_losses,
            "unet_eps_mse_every_25_steps": unet_losses,
        },
        "evaluation": {
            "sampler": "euler",
            "scheduler": "normal",
            "steps": recipe.eval_steps,
            "cfg": recipe.eval_cfg,
            "passed": passed,
            "passed_with_held_out_prefix": passed_prefixed,
            "held_out_prefix": f"{HELD_OUT_PREFIX}, ",
            "samples": results,
        },
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "environment": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
        },
        "weights_sha256": file_sha256(weights),
    }
    if previous is not None and init_from is not None:
        report["continued_from"] = {"weights_sha256": file_sha256(init_from), "recipe": previous}
    (out_dir / RECIPE_NAME).write_text(json.dumps(report, indent=1) + "\n")
    log(f"wrote {weights} ({weights.stat().st_size / 2**20:.1f} MiB) and {out_dir / RECIPE_NAME}")
    return report


def checkpoint_state(unet: torch.nn.Module, vae: Any) -> dict[str, torch.Tensor]:
    """UNet and VAE under SD1.5 checkpoint keys, fp16 (the two VAE scalars stay fp32, exact)."""
    state = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    state.update({f"first_stage_model.{k}": v for k, v in vae.state_dict().items()})
    return {
        k: v.detach().float().clone() if v.ndim == 0 else v.detach().to(torch.float16).contiguous()
        for k, v in state.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a couple of minutes, to smoke-test the script")
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="default: models/toy (.cache/toy_quick with --quick)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: by current load)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="weights of an earlier run (its recipe JSON next to them): keep its VAE, continue its UNet "
        "with the second-stage recipe",
    )
    args = parser.parse_args(argv)
    base = QUICK_RECIPE if args.quick else CONTINUE_RECIPE if args.init_from else PretrainRecipe()
    recipe = replace(base, seed=args.seed)
    out_dir = args.out_dir or (REPO_ROOT / ".cache" / "toy_quick" if args.quick else TOY_DIR)
    torch.set_num_threads(args.threads or 1)
    set_adaptive_threads(args.threads is None)
    log = Log()
    log(f"pretraining the toy into {out_dir} with {torch.get_num_threads()} thread(s): {asdict(recipe)}")
    init_from = args.init_from.resolve() if args.init_from else None
    pretrain(recipe, out_dir.resolve(), REPO_ROOT / ".cache" / "toy_pretrain", log, init_from)
    return 0


if __name__ == "__main__":
    sys.exit(main())
