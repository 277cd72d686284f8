"""The whole train-then-test workflow with the network blocked: no connection leaves the ComfyUI process.

The server starts with an audit hook (a ``sitecustomize`` on its PYTHONPATH) that records and refuses every
non-loopback ``socket.connect``, ``sendto`` and name lookup, and without the offline variables the test bed
usually sets (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE, ...): what is proved is that LoRA Lab does not try, not
that a library was told not to. The shipped workflows/api/train_then_test.json runs on the toy base, with
10 steps at batch 1 instead of 200 at batch 4, and a sweep of one strength at 2 steps instead of seven at 20,
so that it fits the suite's time: every node of the workflow runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.toy import install_toy_workflow_inputs
from tests.helpers.workflows import load_api, tiny_variant
from tools.comfy_server import ComfyServer

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "DIFFUSERS_OFFLINE",
                     "DO_NOT_TRACK")

GUARD = '''
import json, os, socket, sys, traceback

_LOG = os.environ["LORA_LAB_NETWORK_LOG"]
_LOOKUPS = ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr")


def _local(host):
    host = host.decode() if isinstance(host, bytes) else str(host)
    return host in ("", "None", "localhost", "::1") or host.startswith(("127.", "::ffff:127."))


def _guard(event, args):
    if event in ("socket.connect", "socket.sendto") and args:
        sock, address = args[0], args[-1]
        if getattr(sock, "family", None) == socket.AF_UNIX:
            return
        host = address[0] if isinstance(address, tuple) else address
    elif event in _LOOKUPS and args:
        host = args[0]
    else:
        return
    if _local(host):
        return
    with open(_LOG, "a") as log:
        log.write(json.dumps({"pid": os.getpid(), "event": event, "host": str(host),
                              "stack": traceback.format_stack(limit=12)[:-1]}) + "\\n")
    raise OSError(f"network blocked by LoRA Lab's reliability test: {event} to {host}")


sys.addaudithook(_guard)
with open(_LOG, "a") as log:
    log.write(json.dumps({"pid": os.getpid(), "event": "guard loaded"}) + "\\n")
'''


@pytest.fixture(scope="module")
def guarded_python(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An interpreter wrapper that loads the guard and drops the offline variables; and the guard's log."""
    folder = tmp_path_factory.mktemp("network_guard")
    (folder / "sitecustomize.py").write_text(GUARD)
    log = folder / "attempts.jsonl"
    wrapper = folder / "python"
    wrapper.write_text(f"#!/bin/sh\nunset {' '.join(OFFLINE_VARIABLES)}\nexport PYTHONPATH={folder}\n"
                       f"export LORA_LAB_NETWORK_LOG={log}\nexec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper, log


def records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


@pytest.fixture(scope="module")
def offline_server(comfy_root: Path, guarded_python, tmp_path_factory) -> Iterator[ComfyServer]:
    wrapper, _ = guarded_python
    server = ComfyServer(tmp_path_factory.mktemp("comfyui_offline"), comfy_root=comfy_root, python=str(wrapper))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_the_guard_records_and_refuses_a_connection(guarded_python):
    wrapper, log = guarded_python
    before = len(records(log))
    tried = subprocess.run([str(wrapper), "-c", "import urllib.request; urllib.request.urlopen('http://example.com')"],
                           capture_output=True, text=True, timeout=60)
    assert tried.returncode != 0 and "network blocked" in tried.stderr, tried.stderr[-2000:]
    assert [record["host"] for record in records(log)[before:] if record["event"] != "guard loaded"] == ["example.com"]


def test_train_then_test_with_the_network_blocked_makes_no_outbound_attempt(
    offline_server: ComfyServer, guarded_python, figures: Callable[[str, str], None]
):
    server, (_, log) = offline_server, guarded_python
    environment = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
    assert not [entry for entry in environment if entry.split(b"=")[0].decode() in OFFLINE_VARIABLES]
    install_toy_workflow_inputs(server)
    api = tiny_variant(load_api("train_then_test"), {
        "TrainLoRA": {"steps": 10, "batch_size": 1},
        "TestLoRAStrengthSweep": {"steps": 2, "strengths": "1.0"},
    })
    result = server.run(api, timeout=900)
    logged = records(log)
    since_start = logged[logged.index({"pid": server.pid, "event": "guard loaded"}):]  # the server and its children
    attempts = [record for record in since_start if record["event"] != "guard loaded"]
    seconds = result.seconds
    figures("Network blocked", f"workflows/api/train_then_test.json (toy base; 10 steps, batch 1; sweep at 1.0, 2 steps) "
                               f"{result.status} in {seconds:.0f} s with no offline variable set; outbound "
                               f"connection attempts from server start to the end: {len(attempts)}")
    assert result.ok, result.error
    assert not attempts, "\n".join(f"{a['event']} {a['host']}:\n{''.join(a['stack'])}" for a in attempts)
    assert os.environ.get("LORA_LAB_NETWORK_LOG") is None  # the guard is the server's, not this process's
