"""The rooms of trainer_core import only in the directions their docstrings allow.

Each sub-package of ``trainer_core`` opens with what it is for and a line ``May use: ...`` naming
the rooms it may import. These tests read every module's imports and hold each room to that line,
and hold the line to the architecture (the dataset never imports training, nothing imports upwards
into a cycle).
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "trainer_core"
# The architecture (DESIGN.md, "Rooms"): who may use whom. The docstrings must say the same.
ALLOWED = {
    "models": set(),
    "data": set(),
    "adapters": set(),
    "captioning": {"data"},
    "pictures": {"data"},
    "training": {"models", "adapters"},
}
SHARED_MODULES = {"fields", "smoothing"}  # top-level modules every room may use


def rooms() -> list[str]:
    return sorted(p.name for p in CORE.iterdir() if (p / "__init__.py").is_file())


def declared_uses(room: str) -> set[str]:
    module = importlib.import_module(f"trainer_core.{room}")
    doc = module.__doc__ or ""
    match = re.search(r"^May use: (.+)$", doc, re.M)
    assert match, f"trainer_core/{room}/__init__.py: its docstring must end with a line 'May use: ...'"
    text = match.group(1).strip().rstrip(".")
    if text == "no other room":
        return set()
    return {name.strip() for name in text.split(",")}


def imported_rooms(path: Path, source: str | None = None) -> set[str]:
    """The rooms (or shared top-level modules) a module of trainer_core imports, absolute or relative."""
    package = list(path.relative_to(CORE.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, filename=str(path))):
        names: list[list[str]] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names.append(base + (node.module.split(".") if node.module else []))
            elif node.module:
                names.append(node.module.split("."))
        elif isinstance(node, ast.Import):
            names += [alias.name.split(".") for alias in node.names]
        for parts in names:
            if parts[:1] == ["trainer_core"] and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_room_is_known_and_documented():
    assert rooms() == sorted(ALLOWED)
    for room in rooms():
        assert declared_uses(room) == ALLOWED[room], f"trainer_core/{room}: the docstring's 'May use' line"


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_each_room_imports_only_the_rooms_it_may_use(room):
    wrong = []
    for path in sorted((CORE / room).rglob("*.py")):
        for target in imported_rooms(path) - {room} - SHARED_MODULES:
            if target not in ALLOWED[room]:
                wrong.append(f"{path.relative_to(CORE.parent)} imports trainer_core.{target}")
    assert not wrong, "imports against the room's 'May use' line:\n" + "\n".join(wrong)


def test_the_dataset_never_imports_training_and_the_rooms_form_no_cycle():
    assert "training" not in ALLOWED["data"]
    visiting: set[str] = set()

    def reaches(room: str, goal: str) -> bool:
        if room in visiting:
            return False
        visiting.add(room)
        return any(used == goal or reaches(used, goal) for used in ALLOWED[room])

    for room in ALLOWED:
        visiting.clear()
        assert not reaches(room, room), f"{room} can reach itself through the rooms it may use"


def test_only_shared_modules_and_rooms_at_the_top():
    loose = {p.stem for p in CORE.glob("*.py")} - {"__init__"}
    assert loose == SHARED_MODULES, f"modules outside a room: {sorted(loose - SHARED_MODULES)}"


def test_the_check_sees_relative_and_absolute_imports():
    source = "from ..training.loop import train_lora\nimport trainer_core.pictures.grids\nfrom . import buckets\n"
    assert imported_rooms(CORE / "data" / "probe.py", source) == {"training", "pictures", "data"}
