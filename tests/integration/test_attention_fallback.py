"""Training through ComfyUI's sub-quadratic attention when memory runs short.

On a CPU ComfyUI attends with its sub-quadratic attention. With little free memory it computes attention in
key/value chunks, in place (``exp(out=...)``), which autograd refuses: SDXL at 1024 px on a 24 GiB machine
stopped at its first training step with "exp(): functions with out=... arguments don't support automatic
differentiation". Train LoRA's denoiser falls back to PyTorch's attention for exactly those calls.

ComfyUI's own attention code runs here; only its reading of free memory is made small, which is what a full
machine gives it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from comfy_inproc import load_pack  # noqa: E402

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def pack():
    return load_pack()


def test_training_goes_on_where_comfyuis_chunked_attention_cannot_be_differentiated(pack, monkeypatch):
    import comfy.ldm.modules.attention as attention
    import comfy.model_management
    from family_models import family_patcher
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.adapters.inject import autograd_safe_weights

    monkeypatch.setattr(attention, "optimized_attention", attention.attention_sub_quad)
    monkeypatch.setattr(attention, "optimized_attention_masked", attention.attention_sub_quad)
    patcher = family_patcher("sd15")
    denoiser = bridge.ComfyDenoiser(patcher)
    generator = torch.Generator().manual_seed(0)
    noisy = torch.randn(1, 4, 16, 16, generator=generator)
    sigma = torch.tensor([1.0])
    text = {"cross_attn": torch.randn(1, 77, 768, generator=generator)}
    with torch.inference_mode(False), torch.enable_grad(), autograd_safe_weights(denoiser.network):
        reference = denoiser.denoise(noisy, sigma, text).detach()  # memory to spare: one chunk, differentiable

        monkeypatch.setattr(comfy.model_management, "get_free_memory", lambda *args, **kwargs: (2**16, 2**16))
        moving = noisy.clone().requires_grad_(True)
        with pytest.raises(RuntimeError, match="automatic differentiation"):  # ComfyUI's attention alone
            patcher.model.apply_model(moving, sigma, c_crossattn=text["cross_attn"])
        estimate = denoiser.denoise(moving, sigma, text)
        estimate.square().mean().backward()
    assert moving.grad is not None and torch.isfinite(moving.grad).all() and moving.grad.abs().sum() > 0
    torch.testing.assert_close(estimate.detach(), reference, atol=1e-4, rtol=1e-4)
