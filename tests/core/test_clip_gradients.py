"""Gradient clipping (``max_grad_norm``) gives clip_grad_norm_'s gradients to the bit, with or without
clipping, at the edge where clip_grad_norm_ scales by a hair under 1, and with a non-finite norm."""

from __future__ import annotations

import pytest
import torch

from trainer_core.training.step import clip_gradients


def parameters(scale: float) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in [(8, 32), (32, 8), (16,), (4, 4)]]
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator) * scale
    params.append(torch.nn.Parameter(torch.zeros(3)))  # frozen this step: no gradient
    return params


def total_norm(params) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params
                                                       if p.grad is not None])))


@pytest.mark.parametrize("max_norm", [0.01, 1.0, 1e6, "just above the norm", "norm"])
def test_the_gradients_equal_clip_grad_norm_s(max_norm):
    ours, reference = parameters(0.05), parameters(0.05)
    norm = total_norm(ours)
    max_norm = {"just above the norm": norm + 5e-7, "norm": norm}.get(max_norm, max_norm)
    clip_gradients(ours, max_norm)
    torch.nn.utils.clip_grad_norm_(reference, max_norm)
    for mine, theirs in zip(ours, reference, strict=True):
        assert (mine.grad is None) == (theirs.grad is None)
        if mine.grad is not None:
            assert torch.equal(mine.grad, theirs.grad)


def test_a_norm_over_the_limit_is_scaled_down_to_it():
    params = parameters(1.0)
    clip_gradients(params, 0.5)
    assert total_norm(params) == pytest.approx(0.5, rel=1e-5)


def test_a_non_finite_gradient_is_scaled_as_clip_grad_norm_scales_it():
    ours, reference = parameters(1.0), parameters(1.0)
    for params in (ours, reference):
        params[0].grad[0, 0] = float("inf")
    clip_gradients(ours, 1.0)
    torch.nn.utils.clip_grad_norm_(reference, 1.0)
    for mine, theirs in zip(ours[:4], reference[:4], strict=True):
        assert torch.equal(mine.grad.isnan(), theirs.grad.isnan())
        assert torch.equal(mine.grad.nan_to_num(), theirs.grad.nan_to_num())
