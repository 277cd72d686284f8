"""Block weights: the adapters of each block group learn at ``learning_rate x`` that group's weight
(``LoRAConfig``'s ``*_lr_weight`` fields, kohya's ``down_lr_weight`` / ``mid_lr_weight`` / ``up_lr_weight``;
which layers form a group: ``adapters.blocks``).

A group weighted 0 is frozen: its adapter parameters stop requiring gradients and stay out of the
optimizer, so they keep their no-op start (a LoRA's ``lora_up`` stays zero) and that part of the network
is not changed. The other groups get optimizer param groups of their own, each with its ``lr`` set to
``learning_rate x weight``, which the scheduler then scales as it scales the rest.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from ..adapters.blocks import BLOCK_PREFIXES, block_group
from ..adapters.inject import InjectedAdapter
from .results import TrainingError
from .text_encoder import parameter_groups

log = logging.getLogger(__name__)


def weighted_parameters(adapter: InjectedAdapter) -> list[tuple[float, list[nn.Parameter]]]:
    """The adapter's parameters by learning-rate weight, the full rate (1) first; those of 0-weighted groups
    are frozen and left out. An error, before any step, when that leaves nothing to train."""
    weights = adapter.config.block_lr_weights()
    by_weight: dict[float, list[nn.Parameter]] = {}
    groups_seen: set[str] = set()
    for name, param in adapter.named_parameters().items():
        group = block_group(name)
        if group is not None:
            groups_seen.add(group)
        weight = weights[group] if group is not None else 1.0
        if weight == 0:
            param.requires_grad_(False)
        elif param.requires_grad:
            by_weight.setdefault(weight, []).append(param)
    for name in weights:
        if weights[name] != 1 and name not in groups_seen:
            log.warning("LoRA Lab: %s is %g, but the layers trained in %s have no %s: it changes nothing here",
                        name, weights[name], type(adapter.network).__name__, " / ".join(BLOCK_PREFIXES[name]))
    if not by_weight:
        zeroed = ", ".join(sorted(name for name in groups_seen if weights[name] == 0))
        raise TrainingError(
            f"every layer the adapter trains in this model is in a block group weighted 0 ({zeroed}), so nothing "
            "would train: set at least one of these above 0 on the Adapter Settings node (1 = the full learning rate)"
        )
    return sorted(by_weight.items(), key=lambda item: item[0] != 1)


def check_block_weights_with(relative_step: bool, weights: list[float]) -> None:
    """Adafactor with relative_step sets every group's rate itself: block weights other than 0 and 1 cannot apply."""
    scaled = sorted({w for w in weights if w not in (0, 1)})
    if relative_step and scaled:
        raise TrainingError(
            f"block learning-rate weights ({', '.join(f'{w:g}' for w in scaled)}) scale a learning rate, and "
            "Adafactor with relative_step sets its own: turn relative_step off on the Optimizer Settings node, "
            "or set the block weights to 1 (or 0 to freeze a group)"
        )


def optimizer_groups(
    unet: list[nn.Parameter], weights: list[tuple[float, int]], text_encoder: list[nn.Parameter] | None,
    learning_rate: float, text_encoder_lr: float, set_rate: bool,
) -> list[Any]:
    """What the optimizer gets: ``unet`` (in the order of ``weights``: (weight, how many parameters)) in one
    param group per weight at ``learning_rate x weight``, and the text encoder's at ``text_encoder_lr``. All at
    the full rate: the groups ``text_encoder.parameter_groups`` makes, as without block weights."""
    if [weight for weight, _ in weights] == [1.0]:
        return parameter_groups(unet, text_encoder, text_encoder_lr, set_rate)
    groups: list[dict[str, Any]] = []
    start = 0
    for weight, count in weights:
        groups.append({"params": unet[start : start + count], "lr": learning_rate * weight})
        start += count
    if text_encoder is not None:
        groups.append({"params": text_encoder, "lr": text_encoder_lr})
    return groups
