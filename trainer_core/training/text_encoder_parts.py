"""Which text encoders of a CLIP take a text-encoder LoRA, and which of their layers.

A checkpoint's CLIP holds one or more text encoders side by side (SD1.5: CLIP-L; SDXL: CLIP-L and
CLIP-G; SD3: CLIP-L, CLIP-G and T5-XXL; Flux: CLIP-L and T5-XXL; HiDream: those and Llama; Qwen-Image,
Z-Image, Lumina 2, Flux.2: one language model). Each is a *part*, found by the blocks it is made of:

* **CLIP** (``CLIPAttention`` / ``CLIPMLP``): trained whenever ``text_encoder_lr`` is above 0, in kohya's
  layers (q/k/v/out projections, fc1/fc2);
* **T5** (``T5Attention``, ``T5DenseGatedActDense`` / ``T5DenseActDense``): trained only with
  ``train_t5`` on, as kohya trains Flux's and SD3's T5-XXL only with ``--train_t5xxl``: it is a
  4.7 B-parameter encoder whose gradients every step cost far more than the CLIPs';
* **anything else** (the language models; HunyuanDiT's BERT): never. No trainer of those families
  trains them (kohya, musubi-tuner and ai-toolkit train the diffusion model only), and the language
  models are 2-24 B parameters.

Weights stored in a quantised type (fp8, int8) are refused with the fix (load the encoder in fp16 or
bf16): peft would make the LoRA in the weights' own type, which cannot train.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from ..adapters.inject import AdapterError

# The blocks kohya puts text-encoder LoRA layers in (ComfyUI's and transformers' encoders share these names).
_BLOCKS = {
    "clip": (re.compile(r"^CLIP(Sdpa|Flash)?(Attention2?|MLP)$"),
             ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")),
    "t5": (re.compile(r"^T5(Attention|DenseGatedActDense|DenseActDense)$"),
           ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")),
}
_TRAINABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KIND_NAMES = {"clip": "CLIP", "t5": "T5", "llm": "language model", "other": "encoder"}


@dataclass(frozen=True)
class TextEncoderPart:
    """One text encoder inside a CLIP: its attribute name (``clip_l``, ``t5xxl``, ``qwen25_7b``...), what
    it is (``clip``, ``t5``, ``llm`` or ``other``), its size and the module paths of its LoRA layers."""

    name: str
    kind: str
    class_name: str
    parameters: int
    targets: tuple[str, ...]

    def describe(self) -> str:
        size = f"{self.parameters / 1e9:.1f} B" if self.parameters >= 1e8 else f"{self.parameters / 1e6:.0f} M"
        kind = KIND_NAMES[self.kind]
        what = kind if self.class_name == kind else f"{kind}, {self.class_name}"
        return f"{self.name} ({what}, {size} parameters)"


def text_encoder_parts(network: nn.Module) -> list[TextEncoderPart]:
    """The text encoders in ``network`` (a CLIP's ``cond_stage_model``): each direct child module is one,
    or the network itself when its own modules are the blocks."""
    children = [(name, child) for name, child in network.named_children() if isinstance(child, nn.Module)]
    if not children:
        children = [("", network)]
    parts = []
    for name, child in children:
        prefix = f"{name}." if name else ""
        kind = "llm" if _is_language_model(child) else "other"
        targets: tuple[str, ...] = ()
        for candidate in _BLOCKS:
            found = _layers(child, prefix, candidate)
            if found:
                kind, targets = candidate, tuple(found)
                break
        count = sum(p.numel() for p in child.parameters())
        if count:
            parts.append(TextEncoderPart(name or type(child).__name__, kind, _class_name(child), count, targets))
    return parts


def trained_parts(network: nn.Module, train_t5: bool) -> tuple[list[TextEncoderPart], list[tuple[TextEncoderPart, str]]]:
    """(the parts a text-encoder LoRA goes into, [(a part left as it is, why)]); raises ``AdapterError``
    naming the encoders and the fix when none can be trained or one of them is quantised."""
    trained, skipped = [], []
    for part in text_encoder_parts(network):
        if part.kind == "clip" or (part.kind == "t5" and train_t5):
            trained.append(part)
        elif part.kind == "t5":
            skipped.append((part, "T5 trains only with train_t5 on (kohya's train_t5xxl)"))
        else:
            skipped.append((part, "LoRA Lab trains text-encoder LoRAs in CLIP and T5 encoders only (kohya, "
                                  "musubi-tuner and ai-toolkit train no language-model encoder either)"))
    if not trained:
        found = "; ".join(f"{part.describe()}: {why}" for part, why in skipped) or "no text encoder"
        t5_hint = " or turn train_t5 on (Text Encoder settings)" if any(p.kind == "t5" for p, _ in skipped) else ""
        raise AdapterError(
            f"text_encoder_lr is above 0, but this CLIP has no text encoder LoRA Lab trains ({found}). Set "
            f"text_encoder_lr to 0 to train the diffusion model only{t5_hint}."
        )
    for part in trained:
        _refuse_quantised(network, part, train_t5)
    return trained, skipped


def find_text_encoder_targets(network: nn.Module, train_t5: bool = False) -> list[str]:
    """Module paths (in ``network``) of the linears a text-encoder LoRA goes into: every CLIP's attention
    and MLP projections, and T5's attention and feed-forward ones when ``train_t5``."""
    trained, _ = trained_parts(network, train_t5)
    return [target for part in trained for target in part.targets]


def skipped_text_encoders_note(network: nn.Module, train_t5: bool) -> str | None:
    """A console line naming the text encoders that keep their weights while the others train (None if
    every one trains)."""
    trained, skipped = trained_parts(network, train_t5)
    if not skipped:
        return None
    names = ", ".join(part.name for part in trained)
    left = "; ".join(f"{part.describe()}: {why}" for part, why in skipped)
    return f"text-encoder LoRA in {names}; not in {left}."


def _layers(module: nn.Module, prefix: str, kind: str) -> list[str]:
    block, linears = _BLOCKS[kind]
    names = []
    for name, child in module.named_modules():
        if block.match(type(child).__name__):
            for child_name, layer in child.named_children():
                if child_name in linears and isinstance(layer, nn.Linear):
                    names.append(f"{prefix}{name}.{child_name}" if name else f"{prefix}{child_name}")
    return names


def _is_language_model(module: nn.Module) -> bool:
    """A decoder-style language model (Llama, Qwen, Gemma, Mistral): token embeddings named embed_tokens."""
    return any(name.endswith("embed_tokens") for name, _ in module.named_modules())


def _class_name(module: nn.Module) -> str:
    inner = getattr(module, "transformer", None)  # ComfyUI's SDClipModel wraps the encoder as .transformer
    return type(inner if isinstance(inner, nn.Module) else module).__name__


def _refuse_quantised(network: nn.Module, part: TextEncoderPart, train_t5: bool) -> None:
    for target in part.targets:
        dtype = network.get_submodule(target).weight.dtype
        if dtype not in _TRAINABLE_DTYPES:
            fix = "turn train_t5 off, " if part.kind == "t5" and train_t5 else ""
            raise AdapterError(
                f"text_encoder_lr is above 0, but the text encoder {part.describe()} is stored in {dtype} "
                f"(quantised): LoRA Lab cannot train a LoRA in it. Load an fp16 or bf16 copy of that encoder, "
                f"{fix}or set text_encoder_lr to 0."
            )
