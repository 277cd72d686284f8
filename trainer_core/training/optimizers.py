"""Optimizers for LoRA training: one config, one builder, and the learning rate worth showing.

The optimizers are the ones the guides teach (AdamW, the bitsandbytes 8-bit family, Prodigy,
Adafactor, Lion, SGD). Those whose package not every install has are imported only when chosen
(``optimizer_packages``: a missing one names the pip command, and the 8-bit ones are tried on the
training device before use); ``allow_8bit_fallback`` trades an 8-bit optimizer that cannot run for
32-bit training with a warning.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.optim.optimizer import ParamsT

from ..fields import described
from .optimizer_packages import (
    OptimizerUnavailableError,
    bitsandbytes_optimizer_class,
    fallback_name,
    import_optional,
    lion_class,
)

log = logging.getLogger(__name__)

OptimizerName = Literal[
    "AdamW", "AdamW8bit", "Lion8bit", "PagedAdamW8bit", "Prodigy", "Adafactor", "Lion", "SGD"
]

OPTIMIZER_CHOICES: tuple[str, ...] = (
    "AdamW",
    "AdamW8bit",
    "Lion8bit",
    "PagedAdamW8bit",
    "Prodigy",
    "Adafactor",
    "Lion",
    "SGD",
)
EIGHT_BIT_OPTIMIZERS: tuple[str, ...] = ("AdamW8bit", "Lion8bit", "PagedAdamW8bit")

# What each optimizer trains with when learning_rate is None: the guides' values. Prodigy finds its
# own step size and wants 1.0; Lion's sign updates are larger than Adam's, so it wants 3-10x less.
DEFAULT_LEARNING_RATES: dict[str, float] = {"Prodigy": 1.0, "Lion": 3e-5, "Lion8bit": 3e-5}
DEFAULT_LEARNING_RATE = 1e-4
DEFAULT_BETAS: dict[str, tuple[float, float]] = {"Lion": (0.9, 0.99), "Lion8bit": (0.9, 0.99)}
ADAM_BETAS = (0.9, 0.999)


@dataclass(frozen=True)
class OptimizerConfig:
    """Which optimizer updates the LoRA weights, and its settings."""

    name: str = described(
        "Optimizer. AdamW: the safe default. AdamW8bit / PagedAdamW8bit / Lion8bit: bitsandbytes 8-bit"
        " state, about a quarter of AdamW's optimizer memory (CUDA GPUs). Prodigy: finds its own step"
        " size (keep learning rate 1.0). Adafactor: low memory, fixed or relative step. Lion: sign"
        " updates, wants a 3-10x smaller learning rate. SGD: plain gradient descent.",
        "AdamW",
    )
    learning_rate: float | None = described(
        "Learning rate. None = the optimizer's usual value: 1e-4 (AdamW, 8-bit, Adafactor, SGD),"
        " 1.0 (Prodigy), 3e-5 (Lion). Must stay None for Adafactor with relative_step, which sets its own.",
        None,
    )
    weight_decay: float = described(
        "Weight decay: pulls weights toward zero each step (0.01 is the guides' value; 0 = off).", 0.01
    )
    betas: tuple[float, float] | None = described(
        "Momentum coefficients (beta1, beta2) of AdamW, the 8-bit optimizers, Prodigy and Lion. None ="
        " the optimizer's own: (0.9, 0.999), or (0.9, 0.99) for Lion. Adafactor and SGD ignore them.",
        None,
    )
    eps: float = described(
        "Small number added to the denominator of AdamW, the 8-bit Adams and Prodigy for numerical"
        " safety. Adafactor, Lion and SGD do not use it.",
        1e-8,
    )
    momentum: float = described("SGD only: momentum (0 = plain gradient descent, 0.9 typical).", 0.0)
    d_coef: float = described(
        "Prodigy only: scales the step size Prodigy estimates (above 1 = larger steps, 0.5 = smaller)."
        " Change this rather than the learning rate.",
        1.0,
    )
    safeguard_warmup: bool = described(
        "Prodigy only: keep a learning-rate warmup from making Prodigy overestimate its step size."
        " Prodigy's authors recommend it for diffusion models.",
        True,
    )
    use_bias_correction: bool = described(
        "Prodigy only: Adam-style bias correction, smaller steps early in training. Prodigy's authors"
        " recommend it for diffusion models.",
        True,
    )
    decouple: bool = described(
        "Prodigy only: AdamW-style decoupled weight decay (on) or L2 regularisation in the gradient (off).",
        True,
    )
    relative_step: bool = described(
        "Adafactor only: Adafactor sets its own learning rate from the step count (then leave learning"
        " rate empty; schedulers do not apply). Off = the learning rate and scheduler you choose.",
        False,
    )
    scale_parameter: bool = described(
        "Adafactor only: multiply the learning rate by each weight's root-mean-square size.", False
    )
    warmup_init: bool = described(
        "Adafactor with relative_step only: start from a tiny learning rate and grow it (its own warmup).",
        False,
    )
    allow_8bit_fallback: bool = described(
        "If an 8-bit optimizer cannot run here (no bitsandbytes, or no support for this device), train"
        " with its 32-bit version (AdamW, or Lion for Lion8bit) and log a warning instead of stopping."
        " Needs more memory.",
        False,
    )

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZER_CHOICES:
            raise ValueError(f"optimizer name {self.name!r} is not one of {', '.join(OPTIMIZER_CHOICES)}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(
                f"learning_rate must be positive (or None for the optimizer's default), got {self.learning_rate}"
            )
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be 0 or more, got {self.weight_decay}")
        if self.betas is not None and (
            len(self.betas) != 2 or not all(0.0 <= beta < 1.0 for beta in self.betas)
        ):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not self.d_coef > 0:
            raise ValueError(f"d_coef must be positive, got {self.d_coef}")
        if self.name == "Adafactor":
            if self.relative_step and self.learning_rate is not None:
                raise ValueError(
                    f"Adafactor with relative_step sets its own learning rate, so learning_rate must be None"
                    f" (got {self.learning_rate}); leave it empty, or turn relative_step off to use it"
                )
            if self.warmup_init and not self.relative_step:
                raise ValueError(
                    "Adafactor's warmup_init works only with relative_step: turn one on or the other off"
                )

    def resolved_learning_rate(self) -> float | None:
        """The learning rate the optimizer gets; None only for Adafactor with relative_step."""
        if self.learning_rate is not None:
            return self.learning_rate
        if self.name == "Adafactor" and self.relative_step:
            return None
        return DEFAULT_LEARNING_RATES.get(self.name, DEFAULT_LEARNING_RATE)

    def resolved_betas(self) -> tuple[float, float]:
        """``betas``, or the chosen optimizer's own when None."""
        if self.betas is not None:
            return (float(self.betas[0]), float(self.betas[1]))
        return DEFAULT_BETAS.get(self.name, ADAM_BETAS)


def build_optimizer(
    params: ParamsT, config: OptimizerConfig, device: torch.device | str
) -> torch.optim.Optimizer:
    """The optimizer ``config`` names, over ``params`` (tensors, or param-group dicts with their own "lr").

    ``device`` is where the parameters live; the 8-bit optimizers are tried there first.
    Raises ``ImportError`` (with the pip command) when the optimizer's package is missing and
    ``OptimizerUnavailableError`` when bitsandbytes is installed but cannot run on ``device``,
    unless ``config.allow_8bit_fallback`` lets an 8-bit optimizer fall back to 32 bits.
    """
    device = torch.device(device)
    param_list: list[Any] = list(params)
    if not param_list:
        raise ValueError("build_optimizer got no parameters to train")
    if config.name in EIGHT_BIT_OPTIMIZERS:
        return _build_8bit(param_list, config, device)
    if config.name == "Prodigy":
        return _build_prodigy(param_list, config)
    if config.name == "Adafactor":
        return _build_adafactor(param_list, config)
    if config.name == "Lion":
        return _build_lion(param_list, config, device)
    learning_rate = _fixed_learning_rate(config)
    if config.name == "SGD":
        return torch.optim.SGD(
            param_list, lr=learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(
        param_list,
        lr=learning_rate,
        betas=config.resolved_betas(),
        eps=config.eps,
        weight_decay=config.weight_decay,
    )


def check_optimizer_available(config: OptimizerConfig, device: torch.device | str) -> None:
    """Raise the error ``build_optimizer`` would raise for a missing or unusable package, without building it.

    Cheap enough for a node's input validation: it imports the package and, for the 8-bit
    optimizers, takes one step on a small tensor on ``device``.
    """
    device = torch.device(device)
    if config.name in EIGHT_BIT_OPTIMIZERS:
        try:
            bitsandbytes_optimizer_class(config.name, device)
        except (ImportError, OptimizerUnavailableError):
            if not config.allow_8bit_fallback:
                raise
            check_optimizer_available(dataclasses.replace(config, name=fallback_name(config.name)), device)
    elif config.name == "Prodigy":
        import_optional("prodigyopt", "pip install prodigyopt", "the Prodigy optimizer")
    elif config.name == "Adafactor":
        import_optional("transformers.optimization", "pip install transformers", "the Adafactor optimizer")
    elif config.name == "Lion":
        lion_class(device)


def effective_learning_rate(optimizer: torch.optim.Optimizer, group: int = 0) -> float:
    """The step size worth plotting for one param group, as it stands now (after any scheduler).

    Prodigy: d x lr, the step size it has found. Adafactor: the rate it computes from its
    step count (relative_step) and parameter scale (scale_parameter), for the group's first
    parameter. Everything else: the group's ``lr``.
    """
    param_group = optimizer.param_groups[group]
    if "d" in param_group and "d_coef" in param_group:  # Prodigy
        return float(param_group["d"]) * float(param_group["lr"])
    get_lr = getattr(optimizer, "_get_lr", None)
    if "relative_step" in param_group and callable(get_lr):  # transformers' Adafactor
        first = param_group["params"][0]
        state = optimizer.state.get(first) or {}
        if "step" not in state:  # not stepped yet: the rate its first step will use
            rms = float(first.detach().float().norm(2)) / max(first.numel(), 1) ** 0.5
            state = {"step": 1, "RMS": rms}
        return float(get_lr(param_group, state))
    return float(param_group["lr"])


def _fixed_learning_rate(config: OptimizerConfig) -> float:
    learning_rate = config.resolved_learning_rate()
    assert learning_rate is not None  # only Adafactor with relative_step has none
    return learning_rate


def _build_prodigy(params: list[Any], config: OptimizerConfig) -> torch.optim.Optimizer:
    prodigyopt = import_optional("prodigyopt", "pip install prodigyopt", "the Prodigy optimizer")
    learning_rate = _fixed_learning_rate(config)
    if learning_rate < 0.1:
        log.warning(
            "Prodigy with learning rate %g: Prodigy finds its own step size and expects 1.0; %g makes every"
            " step %g times smaller. To take smaller steps, lower d_coef instead.",
            learning_rate,
            learning_rate,
            1.0 / learning_rate,
        )
    optimizer: torch.optim.Optimizer = prodigyopt.Prodigy(
        params,
        lr=learning_rate,
        betas=config.resolved_betas(),
        eps=config.eps,
        weight_decay=config.weight_decay,
        decouple=config.decouple,
        use_bias_correction=config.use_bias_correction,
        safeguard_warmup=config.safeguard_warmup,
        d_coef=config.d_coef,
    )
    return optimizer


def _build_adafactor(params: list[Any], config: OptimizerConfig) -> torch.optim.Optimizer:
    optimization = import_optional(
        "transformers.optimization", "pip install transformers", "the Adafactor optimizer"
    )
    optimizer: torch.optim.Optimizer = optimization.Adafactor(
        params,
        lr=config.resolved_learning_rate(),
        weight_decay=config.weight_decay,
        scale_parameter=config.scale_parameter,
        relative_step=config.relative_step,
        warmup_init=config.warmup_init,
    )
    return optimizer


def _build_lion(params: list[Any], config: OptimizerConfig, device: torch.device) -> torch.optim.Optimizer:
    optimizer: torch.optim.Optimizer = lion_class(device)(
        params,
        lr=_fixed_learning_rate(config),
        betas=config.resolved_betas(),
        weight_decay=config.weight_decay,
    )
    return optimizer


def _build_8bit(params: list[Any], config: OptimizerConfig, device: torch.device) -> torch.optim.Optimizer:
    try:
        optimizer_class = bitsandbytes_optimizer_class(config.name, device)
    except (ImportError, OptimizerUnavailableError) as error:
        if not config.allow_8bit_fallback:
            raise
        fallback = fallback_name(config.name)
        log.warning(
            "%s cannot run here, so training uses 32-bit %s instead (allow_8bit_fallback is on); its optimizer"
            " state takes about 4x the memory. Reason: %s",
            config.name,
            fallback,
            error,
        )
        return build_optimizer(params, dataclasses.replace(config, name=fallback), device)
    learning_rate = _fixed_learning_rate(config)
    if config.name == "Lion8bit":
        lion: torch.optim.Optimizer = optimizer_class(
            params, lr=learning_rate, betas=config.resolved_betas(), weight_decay=config.weight_decay
        )
        return lion
    adam: torch.optim.Optimizer = optimizer_class(
        params,
        lr=learning_rate,
        betas=config.resolved_betas(),
        eps=config.eps,
        weight_decay=config.weight_decay,
    )
    return adam
