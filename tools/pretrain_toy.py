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
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tools.tiny_models import TINY_SD15_UNET_CONFIG  # noqa: E402
from tools.toy_model import (  # noqa: E402
    TOY_DIR,
    build_text_encoder_state,
    file_sha256,
    text_encoder_checksum,
    text_encoder_layout,
)
from tools.toy_run_files import (  # noqa: E402
    RECIPE_NAME,
    WEIGHTS_NAME,
    checkpoint_state,
    environment,
    load_previous_stage,
    recipe_report,
    save_sample_grid,
    save_weights,
)
from tools.toy_scenes import (  # noqa: E402
    CAPTION_TEMPLATE,
    HELD_OUT_PREFIX,
    all_captions,
    picture_colours,
    prefix_words,
    random_scene,
)
from tools.toy_training import (  # noqa: E402
    CONTINUE_RECIPE,
    QUICK_RECIPE,
    EncodedCaptions,
    EncodedScenes,
    Evaluation,
    Log,
    PretrainRecipe,
    encode_captions,
    encode_scenes,
    mean_pairwise_cosine,
    reset_parameters_,
    sample,
    set_adaptive_threads,
    train_autoencoder,
    train_unet,
    zero_output_layers_,
)


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


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    mark = time.monotonic()
    yield
    timings[name] = time.monotonic() - mark


def pretrain(
    recipe: PretrainRecipe, out_dir: Path, work_dir: Path, log: Log, init_from: Path | None = None
) -> dict[str, Any]:
    """Pretrain from scratch, or (``init_from``: an earlier output's weights) keep its VAE and
    continue its UNet."""
    comfy = import_comfy()
    timings: dict[str, float] = {}
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)

    with timed(timings, "text_encoder_and_captions_s"):
        text_encoder, checksum, unet, vae = build_models(comfy, recipe)
        text, model_sampling, sigmas = encode_through_comfyui(
            comfy, recipe, text_encoder, unet, vae, work_dir
        )
    log(
        f"{len(text.captions)} captions, {len(text.prefixed)} with a made-up leading word, + empty encoded; mean pairwise cosine {mean_pairwise_cosine(text.contexts):.4f}"
    )

    with timed(timings, "autoencoder_s"):
        previous: dict[str, Any] | None = None
        if init_from is None:
            autoencoder_losses = train_autoencoder(vae, recipe, rng, log)
        else:
            previous = load_previous_stage(init_from, unet, vae)
            autoencoder_losses = []
            log(f"continuing the UNet and keeping the VAE of {init_from}")

    with timed(timings, "encode_scenes_s"):
        scenes = encode_scenes(vae, recipe, rng, text.captions, set_scale_and_shift=previous is None)
    channel_std = [round(float(v), 3) for v in scenes.latents.std(dim=(0, 2, 3))]
    log(
        f"vae: raw latent mean {scenes.raw_mean:.3f} std {scenes.raw_std:.3f}; probe mse {scenes.probe_mse:.5f}; "
        f"{len(scenes.latents)} scenes encoded; UNet latent channel std {channel_std}"
    )

    with timed(timings, "unet_s"):
        unet_losses = unet_stage(unet, scenes, text, sigmas, recipe, log)

    with timed(timings, "evaluation_s"):
        evaluation = evaluate(comfy, unet, vae, model_sampling, text, recipe)
    log(
        f"samples: {evaluation.passed}/{len(text.prompts)} with the prompt's colour at the centre and background at the "
        f"border; {evaluation.passed_with_held_out_prefix}/{len(text.prompts)} with the held-out leading word '{HELD_OUT_PREFIX}, '"
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    save_sample_grid(evaluation.images, out_dir / "toy_sd15_samples.png")
    weights = save_weights(unet, vae, checksum, out_dir / WEIGHTS_NAME)
    timings["total_s"] = log.elapsed()
    report = recipe_report(
        recipe, text, scenes, vae, checksum, channel_std, (autoencoder_losses, unet_losses), evaluation
    )
    report["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    report["environment"] = environment()
    report["weights_sha256"] = file_sha256(weights)
    if previous is not None and init_from is not None:
        report["continued_from"] = {"weights_sha256": file_sha256(init_from), "recipe": previous}
    (out_dir / RECIPE_NAME).write_text(json.dumps(report, indent=1) + "\n")
    log(f"wrote {weights} ({weights.stat().st_size / 2**20:.1f} MiB) and {out_dir / RECIPE_NAME}")
    return report


def build_models(
    comfy: Any, recipe: PretrainRecipe
) -> tuple[dict[str, torch.Tensor], str, torch.nn.Module, Any]:
    """The frozen random text encoder, and a fresh UNet and VAE drawn from torch's seeded generator."""
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
    return text_encoder, checksum, unet, vae


def encode_through_comfyui(
    comfy: Any,
    recipe: PretrainRecipe,
    text_encoder: dict[str, torch.Tensor],
    unet: torch.nn.Module,
    vae: Any,
    work_dir: Path,
) -> tuple[EncodedCaptions, Any, torch.Tensor]:
    """Encode every caption through ComfyUI's own loader, so they are encoded by the very CLIP object a
    graph gets; also return ComfyUI's SD15 ``model_sampling`` and its sigmas."""
    bootstrap = work_dir / "bootstrap.safetensors"
    model, clip = load_through_comfyui(comfy, text_encoder, unet, vae, bootstrap)
    model_sampling = model.get_model_object("model_sampling")
    sigmas = model_sampling.sigmas.float().clone()
    captions = all_captions()
    prefixed, variant_ids = prefixed_captions(captions, recipe)
    prompts = evaluation_prompts(recipe.eval_samples, recipe.seed + 3)
    prompt_texts = [CAPTION_TEMPLATE.format(shape=s, colour=c, background=b) for s, c, b in prompts]
    held_out = encode_captions(clip, [f"{HELD_OUT_PREFIX}, {text}" for text in prompt_texts])
    contexts = encode_captions(clip, captions + prefixed + [""])
    del model, clip
    bootstrap.unlink()
    text = EncodedCaptions(
        captions=captions,
        prefixed=prefixed,
        variant_ids=variant_ids,
        contexts=contexts,
        empty_id=len(contexts) - 1,
        prompts=prompts,
        prompt_texts=prompt_texts,
        held_out=held_out,
    )
    return text, model_sampling, sigmas


def load_through_comfyui(
    comfy: Any, text_encoder: dict[str, torch.Tensor], unet: torch.nn.Module, vae: Any, bootstrap: Path
) -> tuple[Any, Any]:
    """Save the three parts as one checkpoint and load it as ComfyUI does; check it is seen as SD15
    with our text encoder's layout."""
    from safetensors.torch import save_file

    bootstrap.parent.mkdir(parents=True, exist_ok=True)
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
    return model, clip


def prefixed_captions(captions: list[str], recipe: PretrainRecipe) -> tuple[list[str], torch.Tensor]:
    """Each caption behind ``prefixed_variants`` different made-up words, and where each variant's
    encoding will sit in the contexts (after the plain captions)."""
    words = prefix_words(4 * len(captions), recipe.seed + 4)
    word_rng = np.random.default_rng(recipe.seed + 5)
    prefixed = [
        f"{words[int(i)]}, {caption}"
        for caption in captions
        for i in word_rng.choice(len(words), size=recipe.prefixed_variants, replace=False)
    ]
    variant_ids = (len(captions) + torch.arange(len(prefixed))).view(len(captions), recipe.prefixed_variants)
    return prefixed, variant_ids


def unet_stage(
    unet: torch.nn.Module,
    scenes: EncodedScenes,
    text: EncodedCaptions,
    sigmas: torch.Tensor,
    recipe: PretrainRecipe,
    log: Log,
) -> list[float]:
    """Train the UNet, then keep its EMA weights as fp16 will store them; return the logged losses."""
    generator = torch.Generator().manual_seed(recipe.seed + 2)
    ema, losses = train_unet(
        unet,
        scenes.latents,
        scenes.caption_ids,
        text.contexts,
        text.empty_id,
        text.variant_ids,
        sigmas,
        recipe,
        generator,
        log,
    )
    with torch.no_grad():
        for parameter, average in zip((p for p in unet.parameters() if p.requires_grad), ema, strict=True):
            parameter.copy_(average.half().float())
    return losses


def evaluate(
    comfy: Any,
    unet: torch.nn.Module,
    vae: Any,
    model_sampling: Any,
    text: EncodedCaptions,
    recipe: PretrainRecipe,
) -> Evaluation:
    """Sample each evaluation prompt, plain and behind the held-out word, and score centre and border."""
    caption_index = {caption: i for i, caption in enumerate(text.captions)}
    cond = torch.cat([text.contexts[[caption_index[prompt] for prompt in text.prompt_texts]], text.held_out])
    uncond = text.contexts[[text.empty_id] * len(cond)]
    eval_sigmas = comfy.samplers.calculate_sigmas(model_sampling, "normal", recipe.eval_steps).float()
    unet.eval()
    count = len(text.prompts)
    seeds = list(range(count)) * 2
    images = sample(unet, vae, model_sampling, eval_sigmas, cond, uncond, recipe.eval_cfg, seeds)
    samples = []
    for index, image in enumerate(images):
        _, colour, background = text.prompts[index % count]
        seen = picture_colours(image)
        prompt = text.prompt_texts[index % count]
        samples.append(
            {
                "prompt": prompt if index < count else f"{HELD_OUT_PREFIX}, {prompt}",
                "centre": seen.centre,
                "border": seen.border,
                "ok": seen.centre == colour and seen.border == background,
            }
        )
    return Evaluation(
        images=images,
        samples=samples,
        passed=sum(s["ok"] for s in samples[:count]),
        passed_with_held_out_prefix=sum(s["ok"] for s in samples[count:]),
    )


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
