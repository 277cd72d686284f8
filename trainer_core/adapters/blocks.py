"""Choices made per block of the network: the ResBlock convolutions LoCon adds (``conv_targets``) and the
block groups that get their own learning-rate weight (``block_group``).

**Convolutions (LoCon).** With ``conv_rank`` above 0, kohya's ``conv_dim`` and LyCORIS add an adapter to the
convolutions of a UNet's ResBlocks and of its down- and upsamplers. So do we, on the same layers: every
``nn.Conv2d`` (not grouped) inside a ``ResBlock`` / ``Downsample`` / ``Upsample`` (ComfyUI's
``openaimodel`` classes; diffusers' ``ResnetBlock2D`` / ``Downsample2D`` / ``Upsample2D``). In an SD UNet
those are each ResBlock's two 3x3 convolutions (``in_layers.2``, ``out_layers.3``), its 1x1 skip convolution
where the channel count changes (``skip_connection``), the downsamplers' strided 3x3 ``op`` and the
upsamplers' 3x3 ``conv``. The 3x3 ones get ``conv_rank`` / ``conv_alpha``; a 1x1 one gets the LoRA's own
``rank`` / ``alpha``, as kohya and LyCORIS give it (a 1x1 convolution is a linear layer). Not the UNet's
input and output convolutions, which neither of them trains, and nothing that is not a convolution:
kohya's LoCon also adds the ResBlocks' time-embedding linear (``emb_layers``), which target ``all_linear``
trains here.

**Block groups.** kohya's ``down_lr_weight`` / ``mid_lr_weight`` / ``up_lr_weight`` scale the learning
rate of a UNet's input, middle and output blocks. The same for a DiT's double- and single-stream blocks,
where a family has both kinds: Flux, Flux.2, Chroma and HunyuanVideo (``double_blocks`` /
``single_blocks``), HiDream (``double_stream_blocks`` / ``single_stream_blocks``), AuraFlow
(``double_layers`` / ``single_layers``). The other DiTs have one kind of block (SD3's ``joint_blocks``,
Qwen-Image's ``transformer_blocks``, Wan's ``blocks``, Lumina 2's and Z-Image's ``layers``, ...): no group
applies to them. A layer outside every group (Flux.2's shared modulation with ``all_linear``) trains at
the full rate.
"""

from __future__ import annotations

import re

from torch import nn

# ComfyUI's openaimodel ResBlock (and VideoResBlock), Downsample, Upsample; diffusers' names for the same.
_CONV_BLOCK = re.compile(r"^(\w*ResBlock|ResnetBlock2D|Downsample|Downsample2D|Upsample|Upsample2D)$")

# Config field -> the first part of the module paths in that group (ComfyUI's names; diffusers' UNet names).
BLOCK_PREFIXES: dict[str, tuple[str, ...]] = {
    "input_blocks_lr_weight": ("input_blocks", "down_blocks"),
    "middle_block_lr_weight": ("middle_block", "mid_block"),
    "output_blocks_lr_weight": ("output_blocks", "up_blocks"),
    "double_blocks_lr_weight": ("double_blocks", "double_stream_blocks", "double_layers"),
    "single_blocks_lr_weight": ("single_blocks", "single_stream_blocks", "single_layers"),
}


def conv_targets(network: nn.Module) -> list[str]:
    """Names of the ResBlock / down- / upsampler convolutions LoCon adapts (see the module docstring)."""
    names: list[str] = []
    for block_name, block in network.named_modules():
        if not _CONV_BLOCK.match(type(block).__name__):
            continue
        for name, module in block.named_modules():
            if isinstance(module, nn.Conv2d) and module.groups == 1 and name:
                full = f"{block_name}.{name}" if block_name else name
                if full not in names:
                    names.append(full)
    return names


def is_pointwise(module: nn.Module) -> bool:
    """A 1x1 convolution (or a linear layer): adapted at the LoRA's own rank."""
    return not isinstance(module, nn.Conv2d) or tuple(module.kernel_size) == (1, 1)


def block_group(module_path: str) -> str | None:
    """The config field whose weight applies to the layer at ``module_path`` (None: no group)."""
    first = module_path.split(".", 1)[0]
    for field_name, prefixes in BLOCK_PREFIXES.items():
        if first in prefixes:
            return field_name
    return None
