"""How the test bed runs ComfyUI as a child process: its base directory (with this pack linked into
``custom_nodes``), its command line, its environment (offline, without the caller's PYTHONPATH), and
stopping it."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_LINK_NAME = "lora_lab"
BASE_SUBFOLDERS = ("models/checkpoints", "models/loras", "input", "output", "custom_nodes")
LOOPBACK = "127.0.0.1"


def prepare_base_dir(base_dir: Path, link_pack: bool) -> None:
    for sub in BASE_SUBFOLDERS:
        (base_dir / sub).mkdir(parents=True, exist_ok=True)
    if link_pack:
        link = base_dir / "custom_nodes" / PACK_LINK_NAME
        if link.is_symlink() and link.resolve() != REPO_ROOT:
            link.unlink()
        if not link.exists():
            link.symlink_to(REPO_ROOT, target_is_directory=True)


def server_command(python: str, port: int, base_dir: Path, extra_args: list[str]) -> list[str]:
    return [
        python,
        "main.py",
        "--cpu",
        "--listen",
        LOOPBACK,
        "--port",
        str(port),
        "--base-directory",
        str(base_dir),
        "--disable-api-nodes",
        # ComfyUI's default database lives in its own checkout, shared by every server
        # started from it; one per base directory keeps servers apart. (":memory:" works
        # too but logs SQLite cross-thread errors.)
        "--database-url",
        f"sqlite:///{base_dir / 'comfyui.db'}",
        *extra_args,
    ]


def child_environment(extra_env: dict[str, str]) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        # Nothing may be fetched at test time; fail instead of downloading.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
        **extra_env,
    }
    # The caller's PYTHONPATH (pytest adds the repo root) would shadow ComfyUI's own
    # top-level modules such as `nodes` and `utils` with this pack's folders.
    env.pop("PYTHONPATH", None)
    return env


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
