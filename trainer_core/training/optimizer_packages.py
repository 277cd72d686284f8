"""The packages behind the optional optimizers, and whether they run here.

bitsandbytes, prodigyopt, transformers and lion-pytorch are not in every install: each is imported
only when its optimizer is chosen, and a missing one raises an ``ImportError`` that names the pip
command. bitsandbytes' 8-bit optimizers are tried with one step on a probe tensor on the training
device, so a machine where they cannot run says so (``OptimizerUnavailableError``) before the first
training step instead of failing inside it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch


class OptimizerUnavailableError(RuntimeError):
    """The optimizer's package is installed but cannot run on the training device."""


OptimizerFactory = Callable[..., torch.optim.Optimizer]

# bitsandbytes keeps tensors smaller than 4096 elements in 32-bit state, so the probe must be at
# least that large to exercise the 8-bit kernels.
_PROBE_ELEMENTS = 4096


def import_optional(module: str, pip_command: str, needed_for: str) -> Any:
    """Import ``module``, or raise an ``ImportError`` that says what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{needed_for} needs the Python package {module.split('.')[0]!r}, which is not installed:"
            f" run `{pip_command}` in ComfyUI's Python environment, then restart ComfyUI."
        ) from error


def lion_class(device: torch.device) -> OptimizerFactory:
    """lion-pytorch's Lion (pure torch, any device), else bitsandbytes' 32-bit Lion where it runs."""
    try:
        module = importlib.import_module("lion_pytorch")
        lion: OptimizerFactory = module.Lion
        return lion
    except ImportError as lion_error:
        try:
            return bitsandbytes_optimizer_class("Lion", device)
        except (ImportError, OptimizerUnavailableError):
            raise ImportError(
                "the Lion optimizer needs the Python package 'lion-pytorch', which is not installed: run"
                " `pip install lion-pytorch` in ComfyUI's Python environment, then restart ComfyUI."
            ) from lion_error


def fallback_name(name: str) -> str:
    return "Lion" if name == "Lion8bit" else "AdamW"


def bitsandbytes_optimizer_class(name: str, device: torch.device) -> OptimizerFactory:
    """bitsandbytes' optimizer ``name``, after one step on a probe tensor on ``device`` proved it runs there."""
    fix = (
        f"Fix: train on a CUDA GPU with `pip install bitsandbytes`, or choose {fallback_name(name)} instead"
        f" of {name}, or turn on allow_8bit_fallback to train with 32-bit {fallback_name(name)} here."
    )
    no_cuda = "" if torch.cuda.is_available() else " This machine has no CUDA GPU."
    try:
        bitsandbytes = importlib.import_module("bitsandbytes")
    except ImportError as error:
        raise ImportError(
            f"{name} needs the Python package 'bitsandbytes', which is not installed.{no_cuda} {fix}"
        ) from error
    except Exception as error:  # old bitsandbytes builds raise RuntimeError at import without CUDA
        raise OptimizerUnavailableError(
            f"{name}: bitsandbytes is installed but does not load ({type(error).__name__}: {error}).{no_cuda} {fix}"
        ) from error
    version = getattr(bitsandbytes, "__version__", "?")
    optimizer_class = getattr(getattr(bitsandbytes, "optim", None), name, None)
    if optimizer_class is None:
        raise OptimizerUnavailableError(
            f"the installed bitsandbytes {version} has no {name} optimizer. {fix}"
        )
    try:
        probe = torch.zeros(_PROBE_ELEMENTS, device=device, requires_grad=True)
        probe.grad = torch.ones_like(probe)
        optimizer_class([probe], lr=1e-3).step()
    except Exception as error:  # whatever the backend raises, the user's fix is the same
        raise OptimizerUnavailableError(
            f"{name} cannot run on {device.type} with the installed bitsandbytes {version}"
            f" ({type(error).__name__}: {error}).{no_cuda} {fix}"
        ) from error
    checked: OptimizerFactory = optimizer_class
    return checked
