"""ComfyUI's own text encoders (``comfy.sd.CLIP`` over the family's real encoder classes) built tiny, for
text-encoder LoRA tests at the MODEL level.

Each encoder keeps its real output width (so conditioning fits the family's tiny model in
``tiny_families``) and its real tokenizer; the depth and feed-forward width are cut down through the
``<encoder>_model_config`` options ComfyUI's ``SDClipModel`` reads. T5's vocabulary is cut to
``T5_VOCAB`` ids (its tokenizer's ids for the tests' captions are far below that; ``encode`` would fail
on a larger one, never silently). Weights are seeded and made as a loader makes them (inference tensors).
"""

from __future__ import annotations

import types

import torch

CLIP_SMALL = {"num_hidden_layers": 3, "intermediate_size": 256}
T5_SMALL = {"num_layers": 2, "d_ff": 256, "num_heads": 2, "d_kv": 32, "vocab_size": 8192}
T5_VOCAB = T5_SMALL["vocab_size"]


def _target(family: str):
    import comfy.sdxl_clip
    import comfy.text_encoders.flux
    import comfy.text_encoders.sd3_clip

    if family == "sd3":
        return comfy.text_encoders.sd3_clip.SD3ClipModel, comfy.text_encoders.sd3_clip.SD3Tokenizer
    if family == "flux":
        return comfy.text_encoders.flux.FluxClipModel, comfy.text_encoders.flux.FluxTokenizer
    if family == "sdxl":
        return comfy.sdxl_clip.SDXLClipModel, comfy.sdxl_clip.SDXLTokenizer
    raise ValueError(f"no tiny CLIP for {family}")


def tiny_clip(family: str, seed: int = 0):
    """A ``comfy.sd.CLIP`` with ``family``'s real encoder classes (SD3: CLIP-L, CLIP-G, T5-XXL; Flux: CLIP-L,
    T5-XXL; SDXL: CLIP-L, CLIP-G), tiny and seeded."""
    import comfy.sd

    model_class, tokenizer_class = _target(family)
    target = types.SimpleNamespace(params={}, clip=model_class, tokenizer=tokenizer_class)
    options = {"dtype": torch.float32, "clip_l_model_config": CLIP_SMALL, "clip_g_model_config": CLIP_SMALL,
               "t5xxl_model_config": T5_SMALL}
    clip = comfy.sd.CLIP(target, model_options=options)
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        for name, param in clip.cond_stage_model.named_parameters():
            if param.ndim >= 2:
                scale = 1.0 if "shared" in name else 1.0 / param.shape[1] ** 0.5
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
            elif "bias" in name:
                param.zero_()
            else:  # layer norms' (and T5's RMS norms') weights
                param.fill_(1.0)
    return clip
