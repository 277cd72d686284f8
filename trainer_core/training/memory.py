"""Memory options for training: optimizer state on the CPU, and base weights in a lower precision.

**Optimizer state on the CPU.** ``OptimizerPlacement`` keeps an fp32 copy of the adapter's parameters
on the CPU and gives that copy to the optimizer, so the optimizer's state (Adam's two moments: twice the
adapter's size) is created in RAM, not on the GPU. Each step the gradients are copied to the CPU, the
optimizer steps there, and the new values are copied back. The arithmetic is the same as stepping on
the GPU (fp32 either way); what it costs is two copies of the adapter per step and an optimizer step on
the CPU. When training itself runs on the CPU there is nothing to move and the placement does nothing.

**Base weights in a lower precision.** ``low_precision_copy`` makes a copy of a network whose linear
and 2-D convolution weights (nearly all of a diffusion model's size) are stored in fp16, bf16 or fp8;
biases, norms and buffers are copied as they are. Each such layer upcasts its weight to the input's
precision when it runs, through an autograd function that keeps only the stored low-precision weight
for the backward pass, so no full-precision copy of the weights builds up during a step. fp8 is a
storage format here: no fp8 matrix multiplication is used, so it works on any device that can convert
fp8 (CPUs too). The original network is only read. Whoever trains on the copy makes the denoiser use it
(the ComfyUI bridge does it with an object patch on its own model clone).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_input

from .optimizers import EIGHT_BIT_OPTIMIZERS

# -- optimizer state on the CPU -------------------------------------------------------------------------


def optimizer_state_device(training_device: torch.device, state_on_cpu: bool) -> torch.device | None:
    """Where the optimizer's parameters and state live: the CPU when asked for and training runs on
    another device; None means with the model's parameters."""
    if state_on_cpu and torch.device(training_device).type != "cpu":
        return torch.device("cpu")
    return None


def check_state_on_cpu(optimizer_name: str, state_on_cpu: bool) -> None:
    """The 8-bit optimizers (bitsandbytes) keep their state on the GPU: refuse the combination clearly."""
    if state_on_cpu and optimizer_name in EIGHT_BIT_OPTIMIZERS:
        raise ValueError(
            f"optimizer_state_on_cpu cannot be used with {optimizer_name}: bitsandbytes' 8-bit optimizers run"
            " on the GPU only. Turn optimizer_state_on_cpu off (8-bit state is already a quarter of AdamW's),"
            " or choose AdamW to keep its state in RAM."
        )


class OptimizerPlacement:
    """The parameters an optimizer updates (``params``) and the copies between them and the model's.

    With ``state_device`` None the optimizer updates the model's parameters in place and every method is
    a no-op; otherwise it updates fp32 copies on ``state_device``.
    """

    def __init__(self, model_params: Sequence[nn.Parameter], state_device: torch.device | None):
        self.model_params = list(model_params)
        self.device = state_device
        if state_device is None:
            self.params = self.model_params
        else:
            with torch.no_grad():
                self.params = [
                    nn.Parameter(p.detach().to(state_device, torch.float32, copy=True))
                    for p in self.model_params
                ]

    @property
    def offloaded(self) -> bool:
        return self.device is not None

    def gradients_to_optimizer(self) -> None:
        """Move this step's gradients to the optimizer's copies (before unscaling, clipping and stepping)."""
        if not self.offloaded:
            return
        for model_param, param in zip(self.model_params, self.params, strict=True):
            grad = model_param.grad
            param.grad = None if grad is None else grad.detach().to(param.device, torch.float32)
            model_param.grad = None

    @torch.no_grad()
    def parameters_to_model(self) -> None:
        """Copy the optimizer's updated values into the model (after the optimizer step)."""
        if self.offloaded:
            for model_param, param in zip(self.model_params, self.params, strict=True):
                model_param.copy_(param.to(model_param.device, model_param.dtype))

    @torch.no_grad()
    def parameters_from_model(self) -> None:
        """Copy the model's values into the optimizer's copies (after they were set from a resume state)."""
        if self.offloaded:
            for model_param, param in zip(self.model_params, self.params, strict=True):
                param.copy_(model_param.to(param.device, torch.float32))


# -- base weights in a lower precision ------------------------------------------------------------------

BASE_WEIGHT_CHOICES: tuple[str, ...] = ("as loaded", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2")
_BASE_WEIGHT_DTYPES: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}

BASE_WEIGHTS_HELP = (
    "Precision of the frozen base model's weights while training. 'as loaded': the MODEL's own weights, no"
    " copy. fp16 / bf16 / fp8: training runs on a copy of the diffusion model whose linear and convolution"
    " weights are stored in that precision; the MODEL other nodes use is not changed. The copy is made in"
    " RAM and is what goes to the GPU instead of the loaded weights: about 1/2 (fp16, bf16) or 1/4 (fp8)"
    " of fp32 weights' memory (half of fp16's). Costs: the copy takes RAM and a few seconds to make; each"
    " layer's weight is upcast to the compute precision when used (slower steps; fp8 is storage only, no"
    " fp8 matmuls, so it works on CPU too); the LoRA learns against a rounded base (fp8 most), which"
    " matters little for most LoRAs. Saves the most with gradient_checkpointing on."
)


def base_weight_dtype(choice: str) -> torch.dtype | None:
    """The storage dtype of a ``BASE_WEIGHT_CHOICES`` entry; None for 'as loaded'."""
    if choice == "as loaded":
        return None
    if choice not in _BASE_WEIGHT_DTYPES:
        raise ValueError(f"base_weights must be one of {', '.join(BASE_WEIGHT_CHOICES)}; got {choice!r}")
    return _BASE_WEIGHT_DTYPES[choice]


def _castable(module: nn.Module, dtype: torch.dtype) -> bool:
    """A layer whose weight can be stored in ``dtype`` and upcast per call by the functions below."""
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            return False
    elif not isinstance(module, nn.Linear):
        return False
    weight = module.weight
    return isinstance(weight, torch.Tensor) and weight.dtype.is_floating_point and weight.dtype != dtype


def needs_low_precision_copy(network: nn.Module, dtype: torch.dtype | None) -> bool:
    """Whether storing ``network``'s weights in ``dtype`` changes any of them."""
    return dtype is not None and any(_castable(m, dtype) for m in network.modules())


def low_precision_copy(network: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``network`` (same devices) with linear and 2-D convolution weights stored in ``dtype``.

    ``network`` is only read; its weights may be inference tensors. The copy's parameters are frozen.
    """
    cast_layers = {id(module) for module in network.modules() if _castable(module, dtype)}
    memo: dict[int, Any] = {}
    with torch.inference_mode(False), torch.no_grad():
        for module in network.modules():
            for name, param in module._parameters.items():
                if param is None or id(param) in memo:
                    continue
                if id(module) in cast_layers and name == "weight":
                    data = param.detach().to(dtype=dtype, copy=True)
                else:
                    data = param.detach().clone()
                memo[id(param)] = nn.Parameter(data, requires_grad=False)
            for buffer in module._buffers.values():
                if buffer is not None and id(buffer) not in memo:
                    memo[id(buffer)] = buffer.detach().clone()
        # The memo hands deepcopy our tensors, so no full-precision copy of a weight is ever made.
        duplicate: nn.Module = copy.deepcopy(network, memo)
    for original, module in zip(network.modules(), duplicate.modules(), strict=True):
        if id(original) in cast_layers:
            module.forward = functools.partial(_upcast_forward, module)  # type: ignore[method-assign]
    return duplicate


def stored_weight_bytes(network: nn.Module) -> dict[str, int]:
    """Bytes of ``network``'s parameters by dtype name (what its weights take in memory)."""
    sizes: dict[str, int] = {}
    for param in network.parameters():
        key = str(param.dtype).removeprefix("torch.")
        sizes[key] = sizes.get(key, 0) + param.numel() * param.element_size()
    return sizes


def _upcast_forward(module: nn.Module, input: torch.Tensor) -> torch.Tensor:
    if getattr(module, "weight_function", None) or getattr(module, "bias_function", None):
        # The front end computes this layer's weight per call (ComfyUI's weight_function lists, which
        # also upcast): its own forward does it.
        return type(module).forward(module, input)
    if isinstance(module, nn.Conv2d):
        output: torch.Tensor = _UpcastConv2d.apply(
            input, module.weight, module.bias, module.stride, module.padding, module.dilation, module.groups
        )
        return output
    linear: torch.Tensor = _UpcastLinear.apply(input, module.weight, module.bias)
    return linear


def _cast_bias(bias: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if bias is None else bias.to(like.dtype)


class _UpcastLinear(torch.autograd.Function):
    """``F.linear`` with the weight upcast on the fly; the backward pass keeps only the stored weight."""

    @staticmethod
    def forward(
        ctx: Any, input: torch.Tensor, stored: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        ctx.save_for_backward(stored)
        ctx.input_dtype = input.dtype
        ctx.bias_needs_grad = bias is not None and bias.requires_grad
        # Without the bias F.linear returns a fresh tensor, not a view: a view made in here could not be
        # modified in place afterwards (ComfyUI's Flux blocks do that).
        output = F.linear(input, stored.to(input.dtype))
        if bias is not None:
            output.add_(bias.to(output.dtype))
        return output

    @staticmethod
    def backward(
        ctx: Any, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor | None, None, torch.Tensor | None]:
        (stored,) = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = (grad_output @ stored.to(grad_output.dtype)).to(ctx.input_dtype)
        grad_bias = grad_output.reshape(-1, grad_output.shape[-1]).sum(0) if ctx.bias_needs_grad else None
        return grad_input, None, grad_bias


class _UpcastConv2d(torch.autograd.Function):
    """``F.conv2d`` with the weight upcast on the fly; the backward pass keeps only the stored weight."""

    @staticmethod
    def forward(
        ctx: Any,
        input: torch.Tensor,
        stored: torch.Tensor,
        bias: torch.Tensor | None,
        stride: Any,
        padding: Any,
        dilation: Any,
        groups: int,
    ) -> torch.Tensor:
        ctx.save_for_backward(stored)
        ctx.settings = (stride, padding, dilation, groups)
        ctx.input_shape = input.shape
        ctx.input_dtype = input.dtype
        ctx.bias_needs_grad = bias is not None and bias.requires_grad
        return F.conv2d(
            input, stored.to(input.dtype), _cast_bias(bias, input), stride, padding, dilation, groups
        )

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        (stored,) = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.settings
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = conv2d_input(
                ctx.input_shape, stored.to(grad_output.dtype), grad_output, stride, padding, dilation, groups
            ).to(ctx.input_dtype)
        grad_bias = grad_output.sum((0, 2, 3)) if ctx.bias_needs_grad else None
        return grad_input, None, grad_bias, None, None, None, None
