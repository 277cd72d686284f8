"""Train a LoRA headless from a workflow saved in the canvas or a TOML config:

    python custom_nodes/lora-lab/headless/train.py my_workflow.json [--output DIR] [--grid]
    accelerate launch --num_processes 8 custom_nodes/lora-lab/headless/train.py my_workflow.json

See ``--help`` and the README's "Beyond one machine". This file only imports the pack as a package (as
ComfyUI does) and runs ``headless.cli``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "lora_lab"


def _import_pack() -> None:
    if PACK_NAME in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, PACK_ROOT / "__init__.py", submodule_search_locations=[str(PACK_ROOT)]
    )
    assert spec is not None and spec.loader is not None
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = pack
    spec.loader.exec_module(pack)


if __name__ == "__main__":
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)  # this folder's modules are the pack's, not top-level ones
    _import_pack()
    from lora_lab.headless.cli import main

    sys.exit(main())
