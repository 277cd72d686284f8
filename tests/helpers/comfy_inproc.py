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
    if "comfy.model_management" not in sys.modules:  # a caller that imported ComfyUI itself chose its device
        import_comfy()
    spec = importlib.util.spec_from_file_location(
        "lora_lab", REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    assert spec is not None and spec.loader is not None
    pack = importlib.util.module_from_spec(spec)
    sys.modules["lora_lab"] = pack
    spec.loader.exec_module(pack)
    return pack


def tiny_model_patcher(family: str, seed: int = 0):
    """A ComfyUI ``ModelPatcher`` over a tiny model of ``family`` (a name in ``tiny_families.FAMILIES``),
    built with ComfyUI's own ``supported_models`` class, with weights as a loader makes them (inference
    tensors)."""
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiny_families import FAMILIES, I2V_FAMILIES

    spec = FAMILIES[family] if family in FAMILIES else I2V_FAMILIES[family]
    model_class = getattr(comfy.supported_models, spec.model_class)
    torch.manual_seed(seed)
    config = dict(model_class.unet_config)
    config.update(spec.config)
    model_config = model_class(config)
    model_config.set_inference_dtype(torch.float32, None)
    # What get_model() reads from a checkpoint: "spread" = a tensor whose spread marks a v-prediction SD2.
    state = {k: torch.linspace(-1, 1, 64) if v == "spread" else v for k, v in spec.model_state.items()}
    with torch.inference_mode():
        model = model_config.get_model(state)
        # ComfyUI's ops skip initialisation (a loader fills the weights): fill them here, small and seeded.
        generator = torch.Generator().manual_seed(seed)
        for name, param in model.diffusion_model.named_parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * (0.5 / param.shape[1] ** 0.5))
            else:
                param.copy_(torch.zeros(param.shape) if "bias" in name else torch.ones(param.shape))
        for name in spec.loaded_buffers:
            buffer = model.diffusion_model.get_buffer(name)
            buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
