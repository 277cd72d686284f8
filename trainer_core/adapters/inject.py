"""Attach a trainable peft adapter (LoRA, LoHa, LoKr or DoRA) to a shared network, and take it off
again without a trace.

The network belongs to the caller (in ComfyUI, to every node that holds the same MODEL). Training
must leave it exactly as it was, so this module:

* wraps the chosen layers with peft adapter layers and restores the original layer objects after
  (what differs per adapter type lives in ``adapter_types.py``);
* swaps base parameters that are inference tensors (ComfyUI creates weights under
  ``torch.inference_mode``; autograd refuses to save them for backward) for plain tensors that view
  the *same* storage, so no weight is copied, and puts the original ``Parameter`` objects back after.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .adapter_types import PARAMETER_PREFIXES, adapter_scale, peft_config
from .blocks import conv_targets, is_pointwise
from .config import LoRAConfig

# Modules whose children are the attention / feed-forward layers kohya trains by default: the UNet's
# spatial transformers, the DiT families' double/single/joint blocks, Wan's attention blocks, PixArt's
# blocks and Cosmos Predict2's ``Block``.
_TRANSFORMER_BLOCK = re.compile(
    r"(SpatialTransformer|Transformer2D|TransformerBlock|StreamBlock|JointBlock|DiTBlock|AttentionBlock"
    r"|PixArtMSBlock|^Block$)"
)
# Embedders and heads, left alone by both targets: timestep / guidance / pooled-vector embedders (and the
# networks that turn them into modulation: PixArt's t_block, Wan's time_projection, Chroma's
# approximator), text embedders that are MLPs, and the output layer with its modulation.
_EMBEDDER = re.compile(
    r"(^|\.)(time_embed|label_emb|time_in|vector_in|guidance_in|time_text_embed|t_embedder|y_embedder"
    r"|p_embedder|c_embedder|extra_embedder|time_embedding|time_projection|t_block|text_embedding|mlp_t5"
    r"|distilled_guidance_layer|final_layer|norm_out|proj_out_final)(\.|$)"
    r"|^(head|proj_out|final_linear|modF|pooler)(\.|$)"
)

# The input projections of the token streams, also left alone by both targets: the patch / image embedder
# and the text / caption projection (with HunyuanVideo's text refiner and HunyuanImage's glyph mapper,
# which belong to its text input). kohya's Flux LoRA trains img_in / txt_in only when in_dims asks for them;
# musubi-tuner and ai-toolkit target the transformer blocks alone.
_INPUT_PROJECTION = re.compile(
    r"^(img_in|txt_in|x_embedder|context_embedder|cap_embedder|caption_projection|init_x_linear|cond_seq_linear"
    r"|patch_embedding|byt5_in)(\.|$)"
)

logger = logging.getLogger(__name__)


class AdapterError(ValueError):
    """The network cannot take the requested adapter (with what to change)."""


def find_target_modules(network: nn.Module, target: str) -> list[str]:
    """Names (relative to ``network``) of the layers that get an adapter."""
    trainable_types = (nn.Linear, nn.Conv2d)
    names: list[str] = []
    if target == "attention":
        inside: set[str] = set()
        for name, module in network.named_modules():
            if _TRANSFORMER_BLOCK.search(type(module).__name__):
                inside.add(name)
        for name, module in network.named_modules():
            if not isinstance(module, trainable_types):
                continue
            if isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1):
                continue
            if any(name.startswith(prefix + ".") for prefix in inside) and not (
                _EMBEDDER.search(name) or _INPUT_PROJECTION.search(name)
            ):
                names.append(name)
        if names:
            return names
        # An architecture we don't know by name: fall back to every linear layer, and say so.
        logger.warning(
            "LoRA Lab: target 'attention' found no transformer blocks in %s; training every linear layer "
            "except the embedders, input projections and output layer instead (as target 'all_linear')",
            type(network).__name__,
        )
        target = "all_linear"
    if target == "all_linear":
        for name, module in network.named_modules():
            if isinstance(module, nn.Linear) and not (_EMBEDDER.search(name) or _INPUT_PROJECTION.search(name)):
                names.append(name)
        if names:
            return names
        raise AdapterError(
            f"found no linear layers to train in {type(network).__name__}; this model type is not supported yet"
        )
    raise AdapterError(f"target must be 'attention' or 'all_linear', not {target!r}")


def adapter_targets(network: nn.Module, config: LoRAConfig, note: bool = True) -> list[str]:
    """The layers ``config`` adapts: those of ``config.target`` and, with ``conv_rank`` above 0, the
    ResBlock / down- / upsampler convolutions (``blocks.conv_targets``). A network without such
    convolutions (a DiT) trains its linear layers alone, with a console note (when ``note``)."""
    targets = find_target_modules(network, config.target)
    if config.conv_rank > 0:
        convs = conv_targets(network)
        if not convs and note:
            logger.warning(
                "LoRA Lab: conv_rank is %d, but %s has no ResBlock convolutions (a DiT has none): training its "
                "linear layers only. Set conv_rank to 0 to silence this note.",
                config.conv_rank, type(network).__name__,
            )
        targets += [name for name in convs if name not in targets]
    return targets


def conv_rank_layers(network: nn.Module, targets: list[str], config: LoRAConfig) -> list[str]:
    """Those of ``targets`` that take ``conv_rank`` / ``conv_alpha``: the convolutions wider than 1x1."""
    if config.conv_rank == 0:
        return []
    return [name for name in targets if not is_pointwise(network.get_submodule(name))]


def check_trainable(network: nn.Module) -> None:
    """Refuse networks whose weights cannot carry gradients (quantized formats)."""
    for name, param in network.named_parameters():
        if not param.dtype.is_floating_point:
            raise AdapterError(
                f"the MODEL's weight {name} is stored as {param.dtype} (a quantized model). LoRA Lab cannot "
                "train on quantized weights: load the checkpoint in fp16, bf16 or fp32 instead."
            )
        if type(param.data) not in (torch.Tensor, nn.Parameter):
            raise AdapterError(
                f"the MODEL's weight {name} is a {type(param.data).__name__} (a quantized or packed format). "
                "LoRA Lab cannot train on it: load the checkpoint with the stock checkpoint loader."
            )


def check_rank(network: nn.Module, targets: list[str], rank: int, conv_layers: list[str] | None = None,
               conv_rank: int = 0) -> None:
    """Refuse a rank above the smaller side of a layer: ``rank`` for ``targets``, ``conv_rank`` for those of
    them in ``conv_layers`` (a k x k convolution's input side is channels x k x k)."""
    conv_set = set(conv_layers or ())
    for chosen, setting, names in ((rank, "rank", [n for n in targets if n not in conv_set]),
                                   (conv_rank, "conv_rank", [n for n in targets if n in conv_set])):
        smallest = None
        for name in names:
            module = network.get_submodule(name)
            if isinstance(module, nn.Linear):
                size = min(module.in_features, module.out_features)
            else:
                assert isinstance(module, nn.Conv2d)
                kernel = module.kernel_size[0] * module.kernel_size[1] if name in conv_set else 1
                size = min(module.in_channels * kernel, module.out_channels)
            if smallest is None or size < smallest[0]:
                smallest = (size, name)
        if smallest is not None and chosen > smallest[0]:
            raise AdapterError(
                f"{setting} {chosen} is larger than layer {smallest[1]} ({smallest[0]} features): an adapter's "
                f"rank must be at most the smaller side of every layer it trains. Use {setting} {smallest[0]} or less."
            )


def _plain_view(tensor: torch.Tensor) -> torch.Tensor:
    """A normal tensor over the same memory as an inference tensor (no copy)."""
    view = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    view.set_(tensor.untyped_storage(), tensor.storage_offset(), tensor.size(), tensor.stride())
    return view


@contextlib.contextmanager
def autograd_safe_weights(network: nn.Module) -> Iterator[None]:
    """Within the block, inference-tensor parameters and buffers are plain views of the same memory."""
    swapped: list[tuple[nn.Module, str, bool, torch.Tensor]] = []
    try:
        with torch.inference_mode(False):
            for module in network.modules():
                for name, param in list(module._parameters.items()):
                    if param is not None and param.is_inference():
                        swapped.append((module, name, True, param))
                        module._parameters[name] = nn.Parameter(_plain_view(param), requires_grad=False)
                for name, buf in list(module._buffers.items()):
                    if buf is not None and buf.is_inference():
                        swapped.append((module, name, False, buf))
                        module._buffers[name] = _plain_view(buf)
        yield
    finally:
        for module, name, is_param, original in reversed(swapped):
            if is_param:
                module._parameters[name] = original  # type: ignore[assignment]
            else:
                module._buffers[name] = original


@dataclass
class InjectedAdapter:
    """Adapter layers living inside a network; ``remove()`` restores the network."""

    network: nn.Module
    targets: list[str]
    config: LoRAConfig
    attributes_before: frozenset[str] = frozenset()

    def named_parameters(self) -> dict[str, nn.Parameter]:
        """The adapter's tensors by their name in the network (what a resume state stores)."""
        containers = PARAMETER_PREFIXES[self.config.adapter]
        out: dict[str, nn.Parameter] = {}
        for name in self.targets:
            layer = self.network.get_submodule(name)
            for container in containers:
                module = getattr(layer, container, None)
                if module is None:
                    continue
                for sub_name, param in module.named_parameters():
                    out[f"{name}.{container}.{sub_name}"] = param
        return out

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.named_parameters().values() if p.requires_grad]

    def layers(self) -> Iterator[tuple[str, nn.Module]]:
        for name in self.targets:
            yield name, self.network.get_submodule(name)

    @contextlib.contextmanager
    def training_mode(self) -> Iterator[None]:
        """The network in eval mode, as ComfyUI runs it, with only the adapter's own layers (where LoRA
        dropout lives) in train mode; every module's mode comes back after. A base network in train mode
        takes branches ComfyUI never runs (PixArt's caption dropout, which needs 300 tokens and CUDA)."""
        modes = {module: module.training for module in self.network.modules()}
        try:
            self.network.eval()
            for _, layer in self.layers():
                layer.training = True
                for name, child in layer.named_children():
                    if name != "base_layer":
                        child.train()
            yield
        finally:
            for module, mode in modes.items():
                module.training = mode

    @property
    def scale(self) -> float:
        return adapter_scale(self.config)

    def remove(self) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for name in self.targets:
            parent_name, _, child = name.rpartition(".")
            parent = self.network.get_submodule(parent_name) if parent_name else self.network
            layer = getattr(parent, child)
            if isinstance(layer, BaseTunerLayer):
                setattr(parent, child, layer.get_base_layer())
        self.targets = []
        # peft also leaves bookkeeping on the network itself (peft_config, ...): take it off.
        for name in set(vars(self.network)) - self.attributes_before:
            delattr(self.network, name)


def inject_adapter(
    network: nn.Module, config: LoRAConfig, seed: int, targets: list[str] | None = None
) -> InjectedAdapter:
    """Wrap the target layers of ``network`` with fp32 peft adapter layers of ``config.adapter``'s type
    (initialised from ``seed``; every type starts as a no-op). ``targets`` (module paths) overrides
    the layers ``config.target`` (and ``config.conv_rank``) choose."""
    from peft import inject_adapter_in_model

    if config.rank < 1:
        raise AdapterError(f"rank must be at least 1, got {config.rank}")
    check_trainable(network)
    if targets is None:
        targets = adapter_targets(network, config)
    conv_layers = conv_rank_layers(network, targets, config)
    if config.adapter != "lokr":  # LoKr's rank only decides whether its second factor is stored low-rank
        check_rank(network, targets, config.rank, conv_layers, config.conv_rank)
    attributes_before = frozenset(vars(network))
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False):
        torch.manual_seed(seed)
        inject_adapter_in_model(peft_config(config, targets, conv_layers), network)
    adapter = InjectedAdapter(network=network, targets=targets, config=config, attributes_before=attributes_before)
    with torch.inference_mode(False):
        for param in adapter.named_parameters().values():
            param.data = param.data.float()
            param.requires_grad_(True)
    return adapter
