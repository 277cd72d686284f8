"""What a LoRA file trains: its trainable parameter count and its layers, grouped by kind.

Reads kohya files (``lora_unet_<module path with _>.lora_down.weight``, as Save LoRA writes them) and
ComfyUI's own trainer's (``diffusion_model.<module path>.lora_down.weight``, plus ``.diff`` for a 1-D
weight such as a norm's scale and ``.diff_b`` for a bias), for benchmarks/efficacy.py.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

# (kind, pattern on the module path with '.' or '_' between parts), first match wins.
KINDS: tuple[tuple[str, str], ...] = (
    ("self-attention q/k/v/out", r"attn1"),
    ("cross-attention q/k/v/out", r"attn2"),
    ("feed-forward", r"[._]ff[._]"),
    ("transformer proj_in/proj_out", r"proj_(in|out)"),
    ("transformer norms", r"transformer_blocks[._]\d+[._]norm|[._]norm[._]?$|[._]norm$"),
    ("time embedding", r"time_embed|emb_layers|time_emb_proj"),
    ("ResBlock 3x3/1x1 convs and norms", r"in_layers|out_layers|skip_connection"),
    ("UNet input conv, output norm and conv", r"input_blocks[._]0[._]0|^out[._]\d$"),
)
ADAPTER_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".diff", ".diff_b", ".alpha")


@dataclass(frozen=True)
class LayerSummary:
    parameters: int
    lora_layers: Counter  # kind -> layers with a low-rank pair
    full_diffs: Counter  # kind -> 1-D weights trained in full (.diff)
    bias_diffs: Counter  # kind -> biases trained (.diff_b)

    def describe(self) -> str:
        lines = [f"  trainable parameters: {self.parameters:,}"]
        lora = ", ".join(f"{kind} {count}" for kind, count in sorted(self.lora_layers.items()))
        lines.append(f"  low-rank layers ({sum(self.lora_layers.values())}): {lora}")
        if self.full_diffs:
            lines.append("  1-D weights trained in full (norm scales): "
                         + ", ".join(f"{kind} {count}" for kind, count in sorted(self.full_diffs.items())))
        if self.bias_diffs:
            lines.append(f"  biases trained ({sum(self.bias_diffs.values())}): "
                         + ", ".join(f"{kind} {count}" for kind, count in sorted(self.bias_diffs.items())))
        return "\n".join(lines)


def kind_of(module: str) -> str:
    path = module.removeprefix("lora_unet_").removeprefix("diffusion_model.")
    for kind, pattern in KINDS:
        if re.search(pattern, path):
            return kind
    return f"other ({path})"


def summarise_lora_file(path: Path) -> LayerSummary:
    parameters = 0
    lora_layers: Counter = Counter()
    full_diffs: Counter = Counter()
    bias_diffs: Counter = Counter()
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            suffix = next((s for s in ADAPTER_SUFFIXES if key.endswith(s)), None)
            if suffix is None or suffix == ".alpha":
                continue
            shape = handle.get_slice(key).get_shape()
            count = 1
            for size in shape:
                count *= size
            parameters += count
            module = key[: -len(suffix)]
            if suffix == ".lora_down.weight":
                lora_layers[kind_of(module)] += 1
            elif suffix == ".diff":
                full_diffs[kind_of(module)] += 1
            elif suffix == ".diff_b":
                bias_diffs[kind_of(module)] += 1
    return LayerSummary(parameters, lora_layers, full_diffs, bias_diffs)
