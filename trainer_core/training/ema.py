"""An exponential moving average (EMA) of the adapter's weights, the copy that gets exported.

Averaging the last stretch of training smooths out the noise of single steps. The average is kept in
fp32, on the parameters' device or on the CPU, and updated after every optimizer step. Its decay
warms up as diffusers' ``EMAModel`` does: the ``n``-th update (from 0) uses
``min(decay, (1 + n) / (10 + n))``, so early on the average follows the weights closely (a LoRA starts
from zero, and a long memory of that start would only weaken it) and it lengthens towards ``decay``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch


def ema_decay_at(update: int, decay: float) -> float:
    """The decay of update number ``update`` (0 for the first)."""
    return min(decay, (1 + update) / (10 + update))


class AdapterEMA:
    """A moving average of named parameters (``name -> Parameter``), in fp32."""

    def __init__(
        self, parameters: Mapping[str, torch.nn.Parameter], decay: float, device: torch.device | None = None
    ):
        if not 0 < decay < 1:
            raise ValueError(f"ema_decay must be above 0 and below 1 to average (0 = off), got {decay!r}")
        self.parameters = dict(parameters)
        self.decay = decay
        self.updates = 0
        with torch.no_grad():
            self.average = {
                name: p.detach().to(device=device or p.device, dtype=torch.float32, copy=True)
                for name, p in self.parameters.items()
            }

    @torch.no_grad()
    def update(self) -> None:
        """Fold the parameters' current values into the average (call after each optimizer step)."""
        weight = 1.0 - ema_decay_at(self.updates, self.decay)
        for name, param in self.parameters.items():
            average = self.average[name]
            average.add_(param.detach().to(average.device, torch.float32) - average, alpha=weight)
        self.updates += 1

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Within the block the parameters hold the average; their own values are put back after, exactly."""
        with torch.no_grad():
            own = {name: p.detach().clone() for name, p in self.parameters.items()}
            for name, param in self.parameters.items():
                param.copy_(self.average[name].to(param.device, param.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param in self.parameters.items():
                    param.copy_(own[name])

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "updates": self.updates,
            "average": {name: t.detach().cpu().clone() for name, t in self.average.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.updates = int(state["updates"])
        with torch.no_grad():
            for name, average in self.average.items():
                average.copy_(state["average"][name].to(average.device, torch.float32))


def averaged(ema: AdapterEMA | None) -> contextlib.AbstractContextManager[Any]:
    """``ema.swapped_in()``, or nothing when EMA is off."""
    return ema.swapped_in() if ema is not None else contextlib.nullcontext()
