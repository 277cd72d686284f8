"""Session fixtures for the test bed: a real ComfyUI, a tiny SD1.5 checkpoint, a running server.

- ``comfy_root``: the ComfyUI checkout (installed by tools/setup_comfyui.py or COMFYUI_PATH).
- ``tiny_checkpoint``: path of the tiny SD1.5 checkpoint, built once and cached under .cache/.
- ``comfy_server``: a ComfyServer shared by the session, with the checkpoint available to
  ``CheckpointLoaderSimple`` as ``TINY_CKPT`` ("tiny_sd15.safetensors").
- ``graph``: a fresh ``tools.graph.Graph`` to build an API graph with.

Tests that use ``comfy_server`` (or ``comfy_root``) are marked ``comfy`` automatically.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.comfy_server import ComfyServer, ComfyServerError
from tools.graph import Graph
from tools.setup_comfyui import ComfyUISetupError, ensure_comfyui
from tools.tiny_models import TINY_SD15_VERSION, build_tiny_sd15_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL_CACHE = REPO_ROOT / ".cache" / "tiny_models"
TINY_CKPT = "tiny_sd15.safetensors"
COMFY_FIXTURES = {"comfy_root", "tiny_checkpoint", "comfy_server"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if COMFY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.comfy)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"_report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def comfy_root() -> Path:
    try:
        return ensure_comfyui()
    except ComfyUISetupError as error:
        pytest.fail(f"ComfyUI is not available: {error}", pytrace=False)


def _comfy_version(root: Path) -> str:
    version_file = root / "comfyui_version.py"
    if version_file.is_file():
        for line in version_file.read_text().splitlines():
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"


@pytest.fixture(scope="session")
def tiny_checkpoint(comfy_root: Path) -> Path:
    """The tiny SD1.5 checkpoint, rebuilt only when the builder or ComfyUI version changes."""
    TINY_MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    path = (
        TINY_MODEL_CACHE
        / f"tiny_sd15-v{TINY_SD15_VERSION}-seed0-comfy{_comfy_version(comfy_root)}.safetensors"
    )
    # Several test sessions (other engineers, CI) may start at once: build it only once.
    with open(TINY_MODEL_CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            build_tiny_sd15_checkpoint(path, seed=0, comfy_root=comfy_root)
    return path


@pytest.fixture(scope="session")
def comfy_server(
    comfy_root: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ComfyServer]:
    base_dir = tmp_path_factory.mktemp("comfyui")
    checkpoints = base_dir / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    # A link, not a copy: the checkpoint is 267 MiB.
    (checkpoints / TINY_CKPT).symlink_to(tiny_checkpoint)
    server = ComfyServer(base_dir, comfy_root=comfy_root)
    try:
        server.start()
    except ComfyServerError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _comfy_server_between_tests(request: pytest.FixtureRequest) -> Iterator[None]:
    """Leave the shared server idle for the next test, and attach what it logged during a
    failing test to that test's report."""
    if "comfy_server" not in request.fixturenames:
        yield
        return
    server: ComfyServer = request.getfixturevalue("comfy_server")
    start = server.log_offset()
    yield
    left_over = server.drain() if server.running else []
    report = getattr(request.node, "_report_call", None)
    if report is not None and report.failed:
        report.sections.append(("ComfyUI server log during this test", server.log_text(since=start)[-20000:]))
        if left_over:
            report.sections.append(("ComfyUI prompts interrupted after this test", "\n".join(left_over)))


@pytest.fixture
def graph() -> Graph:
    return Graph()


def pytest_report_header(config: pytest.Config) -> str:
    override = os.environ.get("COMFYUI_PATH")
    return f"ComfyUI: {override or 'bundled (tools/setup_comfyui.py)'}"
