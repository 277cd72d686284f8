"""The toy base model (tools/toy_model.py) placed where a test server's CheckpointLoaderSimple finds it."""

from __future__ import annotations

import pytest

from tools.comfy_server import ComfyServer
from tools.toy_model import TOY_CKPT, ToyModelError, assemble_toy_checkpoint, install_toy


def install_toy_checkpoint(server: ComfyServer) -> str:
    """Assemble the toy (cached under .cache/toy_models) and link it into the server's
    ``models/checkpoints``; return the name ``CheckpointLoaderSimple`` lists it under."""
    try:
        path = assemble_toy_checkpoint()
    except ToyModelError as error:
        pytest.fail(str(error), pytrace=False)
    link = server.models_dir / "checkpoints" / TOY_CKPT
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(path)  # a link: the assembled checkpoint is 280 MB
    return TOY_CKPT


def install_toy_workflow_inputs(server: ComfyServer) -> None:
    """What the shipped workflows/train_then_test.json needs, as ``tools/toy_model.py --install``
    puts it in a user's ComfyUI: the toy checkpoint (linked) and the demo's ring dataset."""
    try:
        install_toy(server.base_dir, link_from=assemble_toy_checkpoint())
    except ToyModelError as error:
        pytest.fail(str(error), pytrace=False)
