"""ComfyUI imported into the test process (CPU), for tests at the MODEL level.

SDXL and flow models are too large to build as checkpoints ComfyUI detects, so those tests build
ComfyUI's own model classes from small configs and wrap them in a real ``ModelPatcher``. The pack is
imported as the package ``lora_lab``, as ComfyUI imports it from ``custom_nodes``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]


def import_comfy() -> Path:
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    from setup_comfyui import comfyui_root

    root = comfyui_root()
    if not (root / "comfy").is_dir():
        import pytest

        pytest.skip(f"ComfyUI is not installed at {root}: run python tools/setup_comfyui.py")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401  (reads args.cpu once)

    return root


def load_pack() -> ModuleType:
    """The repository imported as the custom-node package ``lora_lab``."""
    if "lora_lab" in sys.modules:
        return sys.modules["lora_lab"]
    import_comfy()
    spec = importlib.util.spec_from_file_location(
        "lora_lab", REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    assert spec is not None and spec.loader is not None
    pack = importlib.util.module_from_spec(spec)
    sys.modules["lora_lab"] = pack
    spec.loader.exec_module(pack)
    return pack


SDXL_TINY = dict(
    model_channels=32, channel_mult=[1, 2], num_res_blocks=[1, 1], transformer_depth=[0, 1],
    transformer_depth_output=[0, 0, 1, 1], transformer_depth_middle=-2, num_head_channels=16, num_heads=-1,
    context_dim=2048, adm_in_channels=2816, in_channels=4, out_channels=4, use_linear_in_transformer=True,
    use_spatial_transformer=True, legacy=False, num_classes="sequential", image_size=32, use_checkpoint=False,
    use_temporal_resblock=False, use_temporal_attention=False,
)

FLUX_TINY = dict(
    image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=64,
    mlp_ratio=4.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12], theta=10000, patch_size=2,
    qkv_bias=True, guidance_embed=True,
)


def tiny_model_patcher(family: str, seed: int = 0):
    """A ComfyUI ``ModelPatcher`` over a tiny SDXL or Flux model with weights as a loader makes them
    (inference tensors)."""
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    torch.manual_seed(seed)
    if family == "sdxl":
        config = dict(comfy.supported_models.SDXL.unet_config)
        config.update(SDXL_TINY)
        model_config = comfy.supported_models.SDXL(config)
    elif family == "flux":
        config = dict(comfy.supported_models.Flux.unet_config)
        config.update(FLUX_TINY)
        model_config = comfy.supported_models.Flux(config)
    else:
        raise ValueError(family)
    model_config.set_inference_dtype(torch.float32, None)
    with torch.inference_mode():
        model = model_config.get_model({})
        # ComfyUI's ops skip initialisation (a loader fills the weights): fill them here, small and seeded.
        generator = torch.Generator().manual_seed(seed)
        for name, param in model.diffusion_model.named_parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * (0.5 / param.shape[1] ** 0.5))
            else:
                param.copy_(torch.zeros(param.shape) if "bias" in name else torch.ones(param.shape))
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
