"""The websocket side of a ComfyUI server: one listener thread records every prompt's events, and the
test bed asks of them whether a prompt is done, how far it got, or waits for an event.

Events are kept as (monotonic time received, type, data), by prompt id. ``changed`` is the condition
the listener notifies on each event; hold it to read ``by_prompt`` consistently.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import websocket

from tools.comfy_result import ComfyServerError

Event = tuple[float, str, dict[str, Any]]


class PromptEvents:
    """The events one websocket client of the server received, by prompt id."""

    def __init__(self) -> None:
        self.by_prompt: dict[str, list[Event]] = {}
        self.changed = threading.Condition()
        self._socket: websocket.WebSocket | None = None
        self._listener: threading.Thread | None = None
        self._stopping = threading.Event()

    def connect(self, url: str, thread_name: str) -> None:
        # Connected before any submit, so no event of a fast prompt is missed.
        self._socket = websocket.create_connection(url, timeout=10)
        self._socket.settimeout(0.5)
        self._stopping.clear()
        self._listener = threading.Thread(target=self._listen, name=thread_name, daemon=True)
        self._listener.start()

    def close(self) -> None:
        self._stopping.set()
        if self._socket is not None:
            try:
                self._socket.close()
            except Exception:  # noqa: BLE001 - the server may already be gone; closing is best effort.
                pass
            self._socket = None
        if self._listener is not None:
            self._listener.join(timeout=5)
            self._listener = None

    @property
    def listening(self) -> bool:
        return self._listener is not None and self._listener.is_alive()

    def of(self, prompt_id: str) -> list[Event]:
        """A copy of the prompt's events so far."""
        with self.changed:
            return list(self.by_prompt.get(prompt_id, []))

    def progress_value(self, prompt_id: str, node: str | None = None) -> int:
        """The latest progress value the prompt reported (for one node if given); 0 before any."""
        with self.changed:
            values = [
                data.get("value", 0)
                for _, kind, data in self.by_prompt.get(prompt_id, [])
                if kind == "progress" and (node is None or str(data.get("node")) == node)
            ]
        return values[-1] if values else 0

    def wait_for(self, prompt_id: str, kind: str, timeout: float) -> dict[str, Any]:
        """Block until the prompt has sent an event of this type (e.g. "progress"); return its data."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for _, event_kind, data in self.by_prompt.get(prompt_id, []):
                    if event_kind == kind:
                        return data
                if self.is_done(prompt_id):
                    raise ComfyServerError(f"prompt {prompt_id} finished without a {kind!r} event")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ComfyServerError(
                        f"no {kind!r} event from prompt {prompt_id} within {timeout:.0f} s "
                        f"(last event: {self.last(prompt_id)})"
                    )
                self.changed.wait(timeout=min(remaining, 1.0))

    def is_done(self, prompt_id: str) -> bool:
        """Whether the prompt announced its end (call with ``changed`` held)."""
        return any(
            kind == "executing" and data.get("node") is None
            for _, kind, data in self.by_prompt.get(prompt_id, [])
        )

    def last(self, prompt_id: str) -> str:
        """The prompt's latest event, shortened for an error message."""
        events = self.by_prompt.get(prompt_id)
        if not events:
            return "none"
        _, kind, data = events[-1]
        return f"{kind} {json.dumps(data)[:200]}"

    def _listen(self) -> None:
        sock = self._socket
        while sock is not None and not self._stopping.is_set():
            try:
                message = sock.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketException, OSError):
                break
            moment = time.monotonic()
            if not isinstance(message, str):
                continue  # binary frames are preview images
            try:
                payload = json.loads(message)
            except json.JSONDecodeError:
                continue
            data = payload.get("data") or {}
            prompt_id = data.get("prompt_id")
            if prompt_id is None:
                continue
            with self.changed:
                self.by_prompt.setdefault(prompt_id, []).append((moment, payload.get("type", ""), data))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()
