"""No pickle anywhere: nothing the pack loads can run code.

- Every Python file of the repository is read (AST): no ``torch.load`` without ``weights_only=True``, no
  ``pickle``/``dill``/``joblib`` load, no numpy load with ``allow_pickle=True``.
- A resume state crafted with a pickled callable is refused with a message, and the callable never runs.
- Image-to-text captioners run no code of their model folder unless the user turns ``trust_remote_code`` on.
"""

from __future__ import annotations

import ast
import json
import pathlib
from pathlib import Path

import pytest
import torch

from trainer_core.training.checkpoints import STATE_FORMAT, ResumeError, load_training_state

REPO_ROOT = Path(__file__).resolve().parents[2]
SKIPPED_FOLDERS = {".venv", ".comfy", ".cache", ".git", "node_modules", "__pycache__"}
UNPICKLERS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("dill", "load"), ("dill", "loads"),
              ("joblib", "load"), ("cloudpickle", "load"), ("cloudpickle", "loads")}


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def pickle_uses(source: str) -> list[str]:
    """Each place in ``source`` that may unpickle: 'line N: what'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in {"torch", "pickle", "dill", "joblib", "cloudpickle"}:
            for alias in node.names:
                if (node.module, alias.name) in UNPICKLERS or (node.module, alias.name) == ("torch", "load"):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
        keywords = {keyword.arg: keyword.value for keyword in node.keywords}
        call = (owner, node.func.attr)
        if call == ("torch", "load") and not _is_true(keywords.get("weights_only")):
            found.append(f"line {node.lineno}: torch.load without weights_only=True")
        elif call in UNPICKLERS:
            found.append(f"line {node.lineno}: {owner}.{node.func.attr}")
        elif call in {("np", "load"), ("numpy", "load")} and _is_true(keywords.get("allow_pickle")):
            found.append(f"line {node.lineno}: {owner}.load with allow_pickle=True")
    return found


def repository_python_files() -> list[Path]:
    return [path for path in REPO_ROOT.rglob("*.py")
            if not SKIPPED_FOLDERS & set(path.relative_to(REPO_ROOT).parts)]


def test_the_scanner_finds_every_kind_of_unpickling():
    source = """
import pickle, torch, numpy as np
from pickle import loads
torch.load(path)
torch.load(path, weights_only=False)
pickle.load(handle)
np.load(path, allow_pickle=True)
torch.load(path, map_location="cpu", weights_only=True)
np.load(path)
"""
    assert pickle_uses(source) == [
        "line 3: from pickle import loads", "line 4: torch.load without weights_only=True",
        "line 5: torch.load without weights_only=True", "line 6: pickle.load", "line 7: np.load with allow_pickle=True",
    ]


def test_no_python_file_of_the_repository_unpickles():
    files = repository_python_files()
    assert len(files) > 100, "the scan found too few files: is REPO_ROOT right?"
    uses = {str(path.relative_to(REPO_ROOT)): found for path in files if (found := pickle_uses(path.read_text()))}
    assert not uses, json.dumps(uses, indent=1)


class _TouchOnLoad:
    """Pickles as a call of Path.touch: loading it unsafely would create ``path``."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def test_a_resume_state_with_a_pickled_callable_is_refused_and_runs_nothing(tmp_path: Path):
    marker = tmp_path / "code_ran"
    state = tmp_path / "crafted.lora_lab_state"
    torch.save({"format": STATE_FORMAT, "step": 3, "payload": _TouchOnLoad(marker)}, state)
    with pytest.raises(ResumeError) as refused:
        load_training_state(state)
    message = str(refused.value)
    assert str(state) in message and "holds Python objects LoRA Lab does not load" in message
    assert "delete it and train again without resume" in message
    assert "weights_only" not in message, "torch's advice to load it unsafely must not reach the user"
    assert not marker.exists(), "loading the resume state ran the pickled callable"


def test_a_captioner_folder_with_its_own_code_is_refused_unless_trust_remote_code_is_on(tmp_path: Path):
    pytest.importorskip("transformers")
    from trainer_core.captioning.base import CaptionerModelError
    from trainer_core.captioning.vision_language import VisionLanguageOptions, load_vision_language_captioner

    marker = tmp_path / "code_ran"
    folder = tmp_path / "custom_captioner"
    folder.mkdir()
    (folder / "configuration_custom.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from transformers import PretrainedConfig\n\n\nclass CustomConfig(PretrainedConfig):\n"
        "    model_type = 'lora_lab_custom'\n")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "lora_lab_custom", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"}}))
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "preprocessor_config.json").write_text("{}")
    assert VisionLanguageOptions().trust_remote_code is False
    with pytest.raises(CaptionerModelError) as refused:
        load_vision_language_captioner(folder)  # the options' defaults
    assert "ships its own Python code" in str(refused.value) and "trust_remote_code" in str(refused.value)
    assert not marker.exists(), "the model folder's own code ran with trust_remote_code off"
