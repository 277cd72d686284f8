"""Fixtures that more than one module of tests/core uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.tiny_captioners import build_tiny_blip, build_tiny_tagger, build_tiny_vit_gpt2


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny captioner models (tools/tiny_captioners.py), one folder each: WD14-style taggers
    (one exported for batches, one for one image at a time), BLIP and ViT+GPT-2."""
    root = tmp_path_factory.mktemp("captioners")
    build_tiny_tagger(root / "tagger")
    build_tiny_tagger(root / "tagger_batch1", dynamic_batch=False)
    build_tiny_blip(root / "blip")
    build_tiny_vit_gpt2(root / "vit_gpt2")
    return root
