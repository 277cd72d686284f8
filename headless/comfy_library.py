"""ComfyUI imported as a library: no server, no command line of its own, folders set by the runner.

Which ComfyUI: ``--comfyui PATH``, else ``COMFYUI_PATH``, else the ComfyUI this pack is installed in
(``ComfyUI/custom_nodes/<pack>``), else the project's test copy (``.comfy/ComfyUI-*``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .errors import HeadlessError

PACK_ROOT = Path(__file__).resolve().parents[1]


def _is_comfyui(root: Path) -> bool:
    return (root / "comfy").is_dir() and (root / "folder_paths.py").is_file()


def find_comfyui(given: str | None) -> Path:
    """The ComfyUI checkout to import (see the module docstring), or a HeadlessError listing where it looked."""
    candidates: list[tuple[str, Path]] = []
    if given:
        candidates.append(("--comfyui", Path(given).expanduser()))
    elif os.environ.get("COMFYUI_PATH"):
        candidates.append(("COMFYUI_PATH", Path(os.environ["COMFYUI_PATH"]).expanduser()))
    else:
        if PACK_ROOT.parent.name == "custom_nodes":
            candidates.append(("the ComfyUI this pack is installed in", PACK_ROOT.parent.parent))
        candidates += [("the project's copy", path) for path in sorted((PACK_ROOT / ".comfy").glob("ComfyUI-*"),
                                                                       reverse=True)]
    for _, root in candidates:
        if _is_comfyui(root):
            return root.resolve()
    looked = "\n".join(f"  {label}: {path}" for label, path in candidates) or f"  {PACK_ROOT / '.comfy'}"
    raise HeadlessError(
        f"ComfyUI was not found. Looked in:\n{looked}\nGive the folder that holds ComfyUI's main.py with "
        "--comfyui PATH (or set COMFYUI_PATH)."
    )


def import_comfyui(root: Path, cpu: bool) -> None:
    """Put ``root`` on the import path and set ComfyUI's arguments before its model management starts."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    # ComfyUI's own ``utils`` package, imported first as main.py does: importing ``nodes`` puts ``comfy/`` (with
    # its utils.py) at the front of the import path, after which ``utils.install_util`` could not be found.
    import comfy.options
    import utils  # noqa: F401

    comfy.options.enable_args_parsing(False)
    import torch
    from comfy.cli_args import args

    args.cpu = cpu or not torch.cuda.is_available()
    if not args.cpu and os.environ.get("LOCAL_RANK"):
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # one GPU per process under accelerate launch
    import comfy.model_management  # noqa: F401  (reads args.cpu once)


def set_folders(models: Path | None, input_folder: Path | None, output: Path | None) -> None:
    """ComfyUI's folders: ``models`` is searched first for every kind of model (checkpoints/, loras/...);
    ``output`` gets the grid and, in ``output/loras``, the LoRA and its checkpoints."""
    import folder_paths

    models, input_folder, output = (None if path is None else path.expanduser().resolve()
                                    for path in (models, input_folder, output))
    if models is not None:
        for name in list(folder_paths.folder_names_and_paths):
            if name != "custom_nodes":
                folder_paths.add_model_folder_path(name, str(models / name), is_default=True)
    if input_folder is not None:
        folder_paths.set_input_directory(str(input_folder))
    if output is not None:
        folder_paths.set_output_directory(str(output))
        folder_paths.add_model_folder_path("loras", str(output / "loras"), is_default=True)
    else:  # as ComfyUI's main.py does: LoRAs saved in output/loras are listed too
        folder_paths.add_model_folder_path("loras", os.path.join(folder_paths.get_output_directory(), "loras"))


def register_nodes(pack_name: str) -> dict[str, Any]:
    """ComfyUI's built-in nodes and this pack's, registered as ComfyUI registers them (so its validation
    knows them); returns class_type -> node class."""
    import importlib

    import nodes

    pack_nodes = importlib.import_module(f"{pack_name}.nodes")
    for node_class in pack_nodes.NODE_CLASSES:
        schema = node_class.GET_SCHEMA()
        nodes.NODE_CLASS_MAPPINGS[schema.node_id] = node_class
        nodes.NODE_DISPLAY_NAME_MAPPINGS[schema.node_id] = schema.display_name
    return dict(nodes.NODE_CLASS_MAPPINGS)


def register_builtin_extras() -> dict[str, Any]:
    """ComfyUI's nodes in comfy_extras (ModelSampling*, PreviewAny, ...), loaded as ComfyUI's start-up loads
    them: only for workflows that name one (it takes a few seconds)."""
    import asyncio
    import logging

    import nodes

    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # ComfyUI logs a traceback for each module it cannot import
    try:
        failed = asyncio.run(nodes.init_builtin_extra_nodes())
    finally:
        root.setLevel(level)
    if failed:
        logging.info("ComfyUI's nodes in %s could not be imported (missing packages): workflows cannot use them",
                     ", ".join(failed))
    return dict(nodes.NODE_CLASS_MAPPINGS)


def object_info(classes: dict[str, Any]) -> dict[str, Any]:
    """What ``/object_info`` would say of each node, as far as reading a workflow needs (inputs, outputs)."""
    from comfy_api.internal import _ComfyNodeInternal

    import nodes

    info: dict[str, Any] = {}
    for name, node_class in classes.items():
        if issubclass(node_class, _ComfyNodeInternal):
            info[name] = node_class.GET_NODE_INFO_V1()
            continue
        inputs = node_class.INPUT_TYPES()
        info[name] = {
            "input": inputs, "input_order": {key: list(value) for key, value in inputs.items()},
            "output": list(node_class.RETURN_TYPES), "name": name,
            "output_name": list(getattr(node_class, "RETURN_NAMES", node_class.RETURN_TYPES)),
            "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name, name),
        }
    return info
