"""Which text encoders a text-encoder LoRA goes into, on tiny transformers encoders (their block classes
are named as ComfyUI's): CLIP always, T5 only with train_t5, quantised weights refused with the fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer_core.adapters.inject import AdapterError
from trainer_core.training.text_encoder_parts import (
    find_text_encoder_targets,
    skipped_text_encoders_note,
    text_encoder_parts,
)


def tiny_clip_and_t5() -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    network = nn.Module()
    network.clip_l = CLIPTextModel(CLIPTextConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                                                  num_hidden_layers=2, num_attention_heads=2,
                                                  max_position_embeddings=8))
    network.t5xxl = T5EncoderModel(T5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                                            feed_forward_proj="gated-gelu"))
    return network


def test_clip_trains_by_default_and_t5_only_with_train_t5():
    network = tiny_clip_and_t5()
    parts = {part.name: part for part in text_encoder_parts(network)}
    assert {name: part.kind for name, part in parts.items()} == {"clip_l": "clip", "t5xxl": "t5"}
    clip_only = find_text_encoder_targets(network)
    assert len(clip_only) == 2 * 6 and all(t.startswith("clip_l.") for t in clip_only)
    both = find_text_encoder_targets(network, train_t5=True)
    t5 = [t for t in both if t.startswith("t5xxl.")]
    assert len(t5) == 2 * 7 and {t.rsplit(".", 1)[1] for t in t5} == {"q", "k", "v", "o", "wi_0", "wi_1", "wo"}
    assert skipped_text_encoders_note(network, train_t5=True) is None
    note = skipped_text_encoders_note(network, train_t5=False)
    assert note is not None and note.startswith("text-encoder LoRA in clip_l; not in t5xxl (T5, ")


def test_a_lone_t5_needs_train_t5_and_a_quantised_one_is_refused_with_the_fix():
    network = tiny_clip_and_t5()
    del network.clip_l
    with pytest.raises(AdapterError, match=r"no text encoder LoRA Lab trains \(t5xxl \(T5, .*Set text_encoder_lr to 0 "
                                           r"to train the diffusion model only or turn train_t5 on"):
        find_text_encoder_targets(network)
    assert len(find_text_encoder_targets(network, train_t5=True)) == 14
    with torch.no_grad():
        network.t5xxl.encoder.block[0].layer[0].SelfAttention.q.weight.data = torch.zeros(16, 16, dtype=torch.float8_e4m3fn)
    with pytest.raises(AdapterError, match="stored in torch.float8_e4m3fn .*Load an fp16 or bf16 copy"):
        find_text_encoder_targets(network, train_t5=True)
