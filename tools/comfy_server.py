"""Start, drive and stop a real ComfyUI server: the test bed for the integration tests, the demo
and the benchmarks.

    with ComfyServer(base_dir).start() as server:
        result = server.run(graph)          # API-format graph
        result.raise_for_error()
        print(result.node_seconds, result.outputs)

The server listens on a free loopback port only, keeps its models, inputs, outputs and custom
nodes under ``base_dir`` (this pack is linked into ``custom_nodes/lora_lab``) and writes its
combined stdout/stderr to a log file that tests can read (``log_text()``).

Needs only ``requests`` and ``websocket-client`` in the calling process; ComfyUI itself runs in
a child process with the given interpreter. Its parts: ``comfy_process`` (the child process),
``comfy_events`` (the websocket listener), ``comfy_log`` (reading the log), ``comfy_result`` (what a
prompt did, and the errors).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from tools.comfy_events import PromptEvents
from tools.comfy_log import log_end, pack_import_problems, read_log
from tools.comfy_process import (
    LOOPBACK,
    PACK_LINK_NAME,
    child_environment,
    prepare_base_dir,
    server_command,
    stop_process,
)
from tools.comfy_result import (
    ComfyServerError,
    ProgressEvent,
    PromptRejected,
    RunResult,
    summarise_prompt,
)

__all__ = ["ComfyServer", "ComfyServerError", "ProgressEvent", "PromptRejected", "RunResult", "free_port"]


def _default_comfy_root() -> Path:
    # Importable both as `tools.comfy_server` (pytest, repo root on sys.path) and as a sibling
    # module of a script in tools/.
    try:
        from tools.setup_comfyui import comfyui_root
    except ImportError:
        from setup_comfyui import comfyui_root  # type: ignore[no-redef]
    return comfyui_root()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


class ComfyServer:
    """One ComfyUI process on a loopback port with its own base directory."""

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        comfy_root: str | os.PathLike[str] | None = None,
        port: int | None = None,
        python: str | None = None,
        link_pack: bool = True,
        extra_args: list[str] | tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
    ):
        if comfy_root is None:
            comfy_root = _default_comfy_root()
        self.comfy_root = Path(comfy_root).resolve()
        self.base_dir = Path(base_dir).resolve()
        self.port = port or free_port()
        self.python = python or sys.executable
        self.link_pack = link_pack
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.log_path = Path(log_path) if log_path else self.base_dir / "comfyui.log"
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.client_id = uuid.uuid4().hex

        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._session = requests.Session()
        self._session.trust_env = False  # loopback only: never through a proxy from the environment
        self._events = PromptEvents()  # the websocket's events, by prompt
        self._defaults: dict[str, dict[str, Any]] = {}
        self._all_object_info: dict[str, Any] | None = None
        self._submitted_at: dict[str, float] = {}

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    def prepare_base_dir(self) -> None:
        prepare_base_dir(self.base_dir, self.link_pack)

    def command(self) -> list[str]:
        return server_command(self.python, self.port, self.base_dir, self.extra_args)

    def start(self, timeout: float = 180.0) -> ComfyServer:
        if self._process is not None:
            raise ComfyServerError("server already started")
        if not (self.comfy_root / "main.py").is_file():
            raise ComfyServerError(
                f"no ComfyUI at {self.comfy_root}: run 'python tools/setup_comfyui.py' or set COMFYUI_PATH"
            )
        self.prepare_base_dir()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Truncated: checks such as "no missing-key warning in the log" must see this run only.
        self._log_file = open(self.log_path, "wb")
        env = child_environment(self.extra_env)
        self._process = subprocess.Popen(
            self.command(),
            cwd=self.comfy_root,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C in the caller's terminal must not kill it mid-test.
        )
        try:
            self._wait_until_ready(timeout)
            self._events.connect(f"ws://{LOOPBACK}:{self.port}/ws?clientId={self.client_id}", f"comfy-ws-{self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = self._process.returncode if self._process else None
                raise ComfyServerError(
                    f"ComfyUI exited with code {code} while starting. Log tail ({self.log_path}):\n{self.log_tail()}"
                )
            try:
                if self._session.get(f"{self.url}/system_stats", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.25)
        raise ComfyServerError(
            f"ComfyUI did not answer on {self.url} within {timeout:.0f} s. Log tail:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        self._events.close()
        if self._process is not None:
            stop_process(self._process, timeout)
            self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._session.close()

    def __enter__(self) -> ComfyServer:
        if self._process is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """The ComfyUI process's id (to read its memory, or to kill it in a fault test); None before start."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- log -------------------------------------------------------------------------------

    def log_text(self, since: int = 0) -> str:
        """The server's combined stdout/stderr; ``since`` is a byte offset from ``log_offset()``."""
        return read_log(self.log_path, since)

    def log_offset(self) -> int:
        """Mark the log's current end, to read only what one prompt logged: ``log_text(since=mark)``."""
        return log_end(self.log_path)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- HTTP ------------------------------------------------------------------------------

    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        path = f"/object_info/{node_class}" if node_class else "/object_info"
        return self._get_json(path, timeout=60)

    def require_nodes(self, *class_types: str) -> None:
        """Fail with the pack's import errors from the log if any of these node types is missing."""
        available = self.object_info()
        missing = [name for name in class_types if name not in available]
        if missing:
            raise ComfyServerError(
                f"node types not registered: {missing}. Custom node import problems in the log:\n"
                + (self.custom_node_import_problems() or "(none logged)")
            )

    def custom_node_import_problems(self) -> str:
        """What ComfyUI logged about this pack failing to import or register (with the traceback
        of an import error; ComfyUI logs none for an error inside ``comfy_entrypoint``)."""
        return pack_import_problems(self.log_text(), str(self.base_dir / "custom_nodes" / PACK_LINK_NAME))

    def widget_defaults(self, node_class: str) -> dict[str, Any]:
        """Every widget input of ``node_class`` that has a default, with it (API graphs must name them all)."""
        from tools.workflow_format import default_inputs

        if node_class not in self._defaults:
            self._defaults[node_class] = default_inputs(self.object_info(node_class)[node_class])
        return dict(self._defaults[node_class])

    def train_lora(self, graph: Any, /, **inputs: Any) -> Any:
        """Add TrainLoRA to ``graph`` from one flat set of inputs: the ones it moved to a settings node go
        to that node, added and wired in (``tools.train_graph.add_train_lora``)."""
        from tools.train_graph import add_train_lora

        if self._all_object_info is None:
            self._all_object_info = self.object_info()
        return add_train_lora(graph.node, self._all_object_info, **inputs)

    def history(self, prompt_id: str) -> dict[str, Any]:
        return self._get_json(f"/history/{prompt_id}").get(prompt_id, {})

    def interrupt(self, prompt_id: str | None = None) -> None:
        body = {"prompt_id": prompt_id} if prompt_id else {}
        self._session.post(f"{self.url}/interrupt", json=body, timeout=10).raise_for_status()

    def queue(self) -> dict[str, list[Any]]:
        """``{"queue_running": [...], "queue_pending": [...]}``; item[1] of each entry is its prompt id."""
        return self._get_json("/queue")

    def drain(self, timeout: float = 60.0) -> list[str]:
        """Drop pending prompts and interrupt the running one; return their prompt ids.

        For test teardown: a test that failed while a long prompt ran must not leave it to
        delay or break the tests after it."""
        current = self.queue()
        left_over = [item[1] for item in current["queue_running"] + current["queue_pending"]]
        if not left_over:
            return []
        self._session.post(f"{self.url}/queue", json={"clear": True}, timeout=10).raise_for_status()
        self.interrupt()
        deadline = time.monotonic() + timeout
        while self.queue()["queue_running"]:
            if time.monotonic() > deadline:
                raise ComfyServerError(
                    f"prompts {left_over} still running {timeout:.0f} s after an interrupt"
                )
            time.sleep(0.1)
        return left_over

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """Ask ComfyUI to drop loaded models after the current prompt."""
        body = {"unload_models": unload_models, "free_memory": free_memory}
        self._session.post(f"{self.url}/free", json=body, timeout=10).raise_for_status()

    def _get_json(self, path: str, timeout: float = 10) -> dict[str, Any]:
        response = self._session.get(f"{self.url}{path}", timeout=timeout)
        response.raise_for_status()
        return response.json()

    def output_file(self, entry: dict[str, str]) -> Path:
        """The file behind one entry of a node's UI output, e.g. ``result.outputs["7"]["images"][0]``."""
        folder = {"output": "output", "input": "input", "temp": "temp"}[entry.get("type", "output")]
        return self.base_dir / folder / entry.get("subfolder", "") / entry["filename"]

    def output_files(self, result: RunResult, node_id: str, kind: str = "images") -> list[Path]:
        """Files a node reported in its UI output (``kind`` is the UI key, e.g. "images")."""
        if node_id not in result.outputs:
            raise KeyError(
                f"node {node_id} has no UI output in prompt {result.prompt_id}; outputs: {sorted(result.outputs)}"
            )
        return [self.output_file(entry) for entry in result.outputs[node_id].get(kind, [])]

    # -- prompts ---------------------------------------------------------------------------

    def submit(self, graph: dict[str, Any] | Any, extra_data: dict[str, Any] | None = None) -> str:
        """Queue an API-format graph (a dict, or anything with ``to_api()`` such as
        ``tools.graph.Graph``); return its prompt id. Raises PromptRejected on a 400."""
        if hasattr(graph, "to_api"):
            graph = graph.to_api()
        body = {"prompt": graph, "client_id": self.client_id, "extra_data": extra_data or {}}
        submitted_at = time.monotonic()
        response = self._session.post(f"{self.url}/prompt", json=body, timeout=60)
        if response.status_code == 400:
            payload = response.json()
            raise PromptRejected(payload.get("error", {}), payload.get("node_errors", {}))
        response.raise_for_status()
        payload = response.json()
        if payload.get("node_errors"):
            # ComfyUI queues the outputs that did validate and drops the rest silently: that would hide a
            # broken node, so refuse the prompt the way a 400 does (it still runs the valid part; wait for it).
            self._submitted_at[payload["prompt_id"]] = submitted_at
            self.wait(payload["prompt_id"], timeout=600)
            raise PromptRejected({"message": "some outputs failed validation"}, payload["node_errors"])
        prompt_id = payload["prompt_id"]
        self._submitted_at[prompt_id] = submitted_at
        return prompt_id

    def wait(self, prompt_id: str, timeout: float = 300.0) -> RunResult:
        """Block until the prompt is done; return what it produced and how long each node took."""
        waiting_since = time.monotonic()
        deadline = waiting_since + timeout
        with self._events.changed:
            while not self._events.is_done(prompt_id):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ComfyServerError(
                        f"prompt {prompt_id} not done after {timeout:.0f} s "
                        f"(last event: {self._events.last(prompt_id)}). Log tail:\n{self.log_tail()}"
                    )
                if not self.running:
                    raise ComfyServerError(
                        f"ComfyUI died while running prompt {prompt_id}. Log tail:\n{self.log_tail()}"
                    )
                listening = self._events.listening
                # Without websocket events (socket gone, or the prompt was queued by another
                # client), /history is the only way to know it finished.
                if not listening or (
                    not self._events.by_prompt.get(prompt_id) and time.monotonic() - waiting_since > 2
                ):
                    self._events.changed.release()
                    try:
                        if self.history(prompt_id):
                            break
                    finally:
                        self._events.changed.acquire()
                self._events.changed.wait(timeout=min(remaining, 0.5 if listening else 0.2))
        history = self._read_history(prompt_id, deadline)
        return self._summarise(prompt_id, history)

    def run(
        self, graph: dict[str, Any] | Any, timeout: float = 300.0, extra_data: dict[str, Any] | None = None
    ) -> RunResult:
        return self.wait(self.submit(graph, extra_data=extra_data), timeout=timeout)

    def events(self, prompt_id: str) -> list[tuple[float, str, dict[str, Any]]]:
        """The websocket events of a prompt so far: (seconds since submit, type, data)."""
        events = self._events.of(prompt_id)
        start = self._submitted_at.get(prompt_id, events[0][0] if events else 0.0)
        return [(moment - start, kind, data) for moment, kind, data in events]

    def progress_value(self, prompt_id: str, node: str | None = None) -> int:
        """The latest progress value the prompt reported (for one node if given); 0 before any."""
        return self._events.progress_value(prompt_id, node)

    def wait_for_event(self, prompt_id: str, kind: str, timeout: float = 60.0) -> dict[str, Any]:
        """Block until the prompt has sent an event of this type (e.g. "progress"); return its data."""
        return self._events.wait_for(prompt_id, kind, timeout)

    def _read_history(self, prompt_id: str, deadline: float) -> dict[str, Any]:
        # ComfyUI records history before it announces the end, but be tolerant of a short lag.
        while True:
            history = self.history(prompt_id)
            if history or time.monotonic() > deadline:
                return history
            time.sleep(0.05)

    def _summarise(self, prompt_id: str, history: dict[str, Any]) -> RunResult:
        events = self._events.of(prompt_id)
        submitted_at = self._submitted_at.get(prompt_id, events[0][0] if events else time.monotonic())
        return summarise_prompt(prompt_id, events, submitted_at, history)
