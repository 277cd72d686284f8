"""The toy base model: a tiny SD1.5-format checkpoint pretrained here on coloured shapes.

The repository ships only the trained UNet and VAE (``models/toy/toy_sd15_unet_vae.safetensors``,
fp16, ~32 MB) and the recipe the pretraining wrote (``models/toy/toy_sd15_recipe.json``). The text
encoder stayed random and frozen during pretraining, so instead of shipping its 246 MB it is
rebuilt here from a seed and checked against the checksum in the recipe: if a different numpy gave
different numbers, the UNet would be conditioned on text it never saw, and we say so instead.

How the text encoder is drawn (pure integer and IEEE arithmetic, no library RNG algorithm that
might change between versions): for each tensor in :func:`text_encoder_layout` order, ``n`` raw
64-bit words from numpy's ``PCG64(seed)`` bit generator (``bit_generator.random_raw``, a fixed
algorithm); ``u = (word >> 11) · 2⁻⁵³`` in float64; value ``(2u − 1) · √3 · std``, rounded to fp16.
Uniform weights with the std of ``tools/tiny_models.py``'s scheme: biases 0, norm scales 1, token
embedding 0.02, position embedding 0.01, matrices 1/√fan_in.

    python tools/toy_model.py [dest.safetensors]    # assemble; prints the path
    python tools/toy_model.py --install /path/to/ComfyUI
        # the toy into models/checkpoints and the demo's ring dataset into input/, so the shipped
        # workflows/train_then_test.json runs as it is
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parents[1]
TOY_DIR = REPO_ROOT / "models" / "toy"
TOY_WEIGHTS = TOY_DIR / "toy_sd15_unet_vae.safetensors"
TOY_RECIPE = TOY_DIR / "toy_sd15_recipe.json"
TOY_CACHE = REPO_ROOT / ".cache" / "toy_models"
TOY_CKPT = "toy_sd15.safetensors"

TEXT_ENCODER_PREFIX = "cond_stage_model."
TEXT_ENCODER_GENERATOR = "numpy PCG64 random_raw -> uniform(-sqrt(3) std, sqrt(3) std) in float64 -> fp16"
_CLIP_WIDTH, _CLIP_LAYERS, _CLIP_MLP, _CLIP_VOCAB, _CLIP_POSITIONS = 768, 12, 3072, 49408, 77
_CHUNK = 1 << 22


class ToyModelError(RuntimeError):
    """The toy checkpoint cannot be assembled (missing weights, or a text encoder that differs)."""


def text_encoder_layout() -> list[tuple[str, tuple[int, ...]]]:
    """Keys (without ``cond_stage_model.``) and shapes of ComfyUI's SD1 CLIP-L text encoder, in the
    order the weights are drawn. ``logit_scale`` is not drawn (fixed at log 100)."""
    width = _CLIP_WIDTH
    text = "transformer.text_model."
    layout: list[tuple[str, tuple[int, ...]]] = [
        (text + "embeddings.token_embedding.weight", (_CLIP_VOCAB, width)),
        (text + "embeddings.position_embedding.weight", (_CLIP_POSITIONS, width)),
    ]
    for index in range(_CLIP_LAYERS):
        layer = f"{text}encoder.layers.{index}."
        layout.append((layer + "layer_norm1.weight", (width,)))
        layout.append((layer + "layer_norm1.bias", (width,)))
        for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
            layout.append((f"{layer}self_attn.{projection}.weight", (width, width)))
            layout.append((f"{layer}self_attn.{projection}.bias", (width,)))
        layout.append((layer + "layer_norm2.weight", (width,)))
        layout.append((layer + "layer_norm2.bias", (width,)))
        layout.append((layer + "mlp.fc1.weight", (_CLIP_MLP, width)))
        layout.append((layer + "mlp.fc1.bias", (_CLIP_MLP,)))
        layout.append((layer + "mlp.fc2.weight", (width, _CLIP_MLP)))
        layout.append((layer + "mlp.fc2.bias", (width,)))
    layout.append((text + "final_layer_norm.weight", (width,)))
    layout.append((text + "final_layer_norm.bias", (width,)))
    layout.append(("transformer.text_projection.weight", (width, width)))
    return layout


def _std_for(key: str, shape: tuple[int, ...]) -> float | None:
    """None for tensors that are constant (biases 0, norm scales 1)."""
    if key.endswith(".bias") or len(shape) == 1:
        return None
    if "position_embedding" in key:
        return 0.01
    if "token_embedding" in key:
        return 0.02
    return 1.0 / math.sqrt(math.prod(shape[1:]))


def build_text_encoder_state(seed: int) -> dict[str, torch.Tensor]:
    """The frozen random text encoder, fp16, keys prefixed ``cond_stage_model.`` (see module docstring)."""
    bits = np.random.PCG64(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in text_encoder_layout():
        std = _std_for(key, shape)
        if std is None:
            fill = 0.0 if key.endswith(".bias") else 1.0
            values = np.full(shape, fill, dtype=np.float16)
        else:
            count = math.prod(shape)
            values = np.empty(count, dtype=np.float16)
            half_width = math.sqrt(3.0) * std
            for start in range(0, count, _CHUNK):
                words = bits.random_raw(min(_CHUNK, count - start))
                unit = (words >> np.uint64(11)).astype(np.float64) * (2.0**-53)
                values[start : start + len(words)] = ((2.0 * unit - 1.0) * half_width).astype(np.float16)
            values = values.reshape(shape)
        state[TEXT_ENCODER_PREFIX + key] = torch.from_numpy(values)
    state[TEXT_ENCODER_PREFIX + "logit_scale"] = torch.tensor(math.log(100.0), dtype=torch.float32)
    return state


def text_encoder_checksum(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the text encoder's keys, dtypes, shapes and bytes (sorted by key)."""
    digest = hashlib.sha256()
    for key in sorted(k for k in state if k.startswith(TEXT_ENCODER_PREFIX)):
        tensor = state[key].contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def verify_text_encoder(state: dict[str, torch.Tensor], expected: str) -> None:
    actual = text_encoder_checksum(state)
    if actual != expected:
        raise ToyModelError(
            "the rebuilt toy text encoder differs from the one the toy UNet was trained with "
            f"(sha256 {actual[:16]}…, expected {expected[:16]}… from {TOY_RECIPE.name}). The toy would "
            "ignore its prompts. It is drawn with numpy's PCG64 bit generator "
            f"(numpy {np.__version__} here); rerun tools/pretrain_toy.py to pretrain against this "
            "environment's encoder, or report the numpy/torch versions in an issue."
        )


def read_recipe(recipe_path: Path = TOY_RECIPE) -> dict:
    if not recipe_path.is_file():
        raise ToyModelError(f"{recipe_path} is missing: run python tools/pretrain_toy.py to create the toy")
    return json.loads(recipe_path.read_text())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_toy_checkpoint_path() -> Path:
    return TOY_CACHE / TOY_CKPT


def assemble_toy_checkpoint(
    dest_path: str | os.PathLike[str] | None = None,
    weights_path: Path = TOY_WEIGHTS,
    recipe_path: Path = TOY_RECIPE,
) -> Path:
    """Write the toy as one SD1.5-format checkpoint (UNet + VAE shipped, text encoder rebuilt and
    verified) that ``CheckpointLoaderSimple`` loads, and return its path.

    ``dest_path`` defaults to ``.cache/toy_models/toy_sd15.safetensors``. A checkpoint already
    there that was assembled from the same shipped weights is reused.
    """
    dest = Path(dest_path) if dest_path is not None else default_toy_checkpoint_path()
    dest = dest.resolve()
    if not weights_path.is_file():
        raise ToyModelError(f"{weights_path} is missing: run python tools/pretrain_toy.py to create the toy")
    recipe = read_recipe(recipe_path)
    expected = recipe["text_encoder"]["sha256"]
    stamp = json.dumps({"weights_sha256": file_sha256(weights_path), "text_encoder_sha256": expected})
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Several test sessions may assemble the same file at once: one builds, the others wait.
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.is_file() and _stamp_of(dest) == stamp:
            return dest
        text_encoder = build_text_encoder_state(recipe["text_encoder"]["seed"])
        verify_text_encoder(text_encoder, expected)
        state = dict(text_encoder)
        with safe_open(str(weights_path), framework="pt") as shipped:
            for key in shipped.keys():
                state[key] = shipped.get_tensor(key)
        partial = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
        save_file(state, str(partial), metadata={"lora_lab.toy_model": stamp})
        os.replace(partial, dest)
    return dest


def _stamp_of(path: Path) -> str | None:
    try:
        with safe_open(str(path), framework="pt") as existing:
            return (existing.metadata() or {}).get("lora_lab.toy_model")
    except Exception:  # a truncated or foreign file is rebuilt, never trusted
        return None


def install_toy(comfy_dir: str | os.PathLike[str], link_from: Path | None = None) -> tuple[Path, Path]:
    """Put what ``workflows/train_then_test.json`` needs into a ComfyUI folder (or a server's base
    directory): the toy as ``models/checkpoints/toy_sd15.safetensors`` and the demo's ring dataset as
    ``input/lora_lab_toy_rings``. Returns both paths.

    ``link_from``: an assembled toy to link to instead of writing a 280 MB copy (tests, demo)."""
    try:
        from tools.toy_scenes import DEMO_CONCEPT, DEMO_DATASET, DEMO_IMAGES, write_concept_dataset
    except ImportError:  # run as a script from tools/
        from toy_scenes import DEMO_CONCEPT, DEMO_DATASET, DEMO_IMAGES, write_concept_dataset  # type: ignore

    root = Path(comfy_dir)
    checkpoint = root / "models" / "checkpoints" / TOY_CKPT
    if link_from is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        if checkpoint.is_symlink() or checkpoint.exists():
            checkpoint.unlink()
        checkpoint.symlink_to(link_from.resolve())
    else:
        assemble_toy_checkpoint(checkpoint)
    dataset = root / "input" / DEMO_DATASET
    if not dataset.is_dir():
        write_concept_dataset(dataset, count=DEMO_IMAGES, seed=0, **DEMO_CONCEPT)
    return checkpoint, dataset


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if args[:1] == ["--install"]:
            if len(args) != 2 or not (Path(args[1]) / "models").is_dir():
                print(
                    "usage: python tools/toy_model.py --install /path/to/ComfyUI (the folder with models/ "
                    "and input/ in it)",
                    file=sys.stderr,
                )
                return 2
            for path in install_toy(args[1]):
                print(path)
        else:
            print(assemble_toy_checkpoint(args[0] if args else None))
    except ToyModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
