"""The README's node reference is generated from the nodes' schemas and must match them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.comfy
def test_readme_lists_every_node_input_and_output_as_the_nodes_define_them():
    completed = subprocess.run([sys.executable, "tools/node_docs.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
