"""What one prompt did: ComfyUI's websocket events and /history entry folded into a RunResult, and the
errors that say why a prompt did not run (``PromptRejected``: the graph did not validate)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ComfyServerError(RuntimeError):
    """The server could not be started, died, did not answer as expected, or a prompt failed."""


class PromptRejected(ComfyServerError):
    """POST /prompt answered 400: the graph did not validate. ``node_errors`` says which node and why."""

    def __init__(self, error: dict[str, Any], node_errors: dict[str, Any]):
        self.error = error
        self.node_errors = node_errors
        lines = [f"prompt rejected: {error.get('message', error)} {error.get('details', '')}".rstrip()]
        for node_id, node_error in node_errors.items():
            for reason in node_error.get("errors", []):
                lines.append(
                    f"  node {node_id} ({node_error.get('class_type')}): {reason.get('message')}"
                    f" {reason.get('details', '')}".rstrip()
                )
        super().__init__("\n".join(lines))


@dataclass
class ProgressEvent:
    node: str | None
    value: int
    max: int
    seconds: float  # since the prompt was submitted


@dataclass
class RunResult:
    """What one prompt did, from the websocket events and ``/history/<id>``."""

    prompt_id: str
    status: str  # "success", "error" or "interrupted"
    outputs: dict[str, dict[str, Any]]  # node id -> the node's UI output, e.g. {"images": [...]}
    node_seconds: dict[str, float]  # wall time per executed node (cached nodes are absent)
    cached_nodes: list[str]
    progress: list[ProgressEvent]
    seconds: float  # submit to done
    error: str | None = None  # "<node id> (<class>): <ExceptionType>: <message>"
    error_details: dict[str, Any] | None = None  # the execution_error event as ComfyUI sent it
    history: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def raise_for_error(self) -> RunResult:
        if not self.ok:
            raise ComfyServerError(f"prompt {self.prompt_id} ended with status {self.status}: {self.error}")
        return self


def summarise_prompt(
    prompt_id: str,
    events: list[tuple[float, str, dict[str, Any]]],
    submitted_at: float,
    history: dict[str, Any],
) -> RunResult:
    """Fold a prompt's websocket events (monotonic time, type, data) and its /history entry
    into a RunResult. A node's time runs from its ``executing`` event to the next event that
    ends it (its ``executed``, the next node, or the end of the prompt)."""
    start = submitted_at
    timeline = _read_events(events, start)
    error_details, interrupted = timeline.error_details, timeline.interrupted

    # History holds the same messages, so errors are reported even if the websocket missed them.
    status_block = history.get("status", {})
    for kind, data in status_block.get("messages", []):
        if kind == "execution_error" and error_details is None:
            error_details = data
        elif kind == "execution_interrupted":
            interrupted = True

    return RunResult(
        prompt_id=prompt_id,
        status=_status(status_block, error_details, interrupted),
        outputs=history.get("outputs", {}),
        node_seconds=timeline.node_seconds,
        cached_nodes=timeline.cached,
        progress=timeline.progress,
        seconds=timeline.end - start,
        error=_error_text(error_details, interrupted),
        error_details=error_details,
        history=history,
    )


@dataclass
class _Timeline:
    """What a prompt's websocket events say, before its /history entry is read."""

    node_seconds: dict[str, float]
    progress: list[ProgressEvent]
    cached: list[str]
    error_details: dict[str, Any] | None
    interrupted: bool
    end: float  # the time of the last event (``start`` when there is none)


def _read_events(events: list[tuple[float, str, dict[str, Any]]], start: float) -> _Timeline:
    node_seconds: dict[str, float] = {}
    progress: list[ProgressEvent] = []
    cached: list[str] = []
    error_details: dict[str, Any] | None = None
    interrupted = False
    running: tuple[str, float] | None = None
    end = start
    for moment, kind, data in events:
        end = moment
        finishes_node = kind == "executed" and running is not None and str(data.get("node")) == running[0]
        if finishes_node or kind in (
            "executing",
            "execution_success",
            "execution_error",
            "execution_interrupted",
        ):
            if running is not None:
                node_seconds[running[0]] = node_seconds.get(running[0], 0.0) + moment - running[1]
                running = None
            if kind == "executing" and data.get("node") is not None:
                running = (str(data["node"]), moment)
        if kind == "progress":
            progress.append(
                ProgressEvent(data.get("node"), data.get("value", 0), data.get("max", 0), moment - start)
            )
        elif kind == "execution_cached":
            cached.extend(str(node) for node in data.get("nodes", []))
        elif kind == "execution_error":
            error_details = data
        elif kind == "execution_interrupted":
            interrupted = True
    return _Timeline(node_seconds, progress, cached, error_details, interrupted, end)


def _status(status_block: dict[str, Any], error_details: dict[str, Any] | None, interrupted: bool) -> str:
    if interrupted:
        return "interrupted"
    if error_details is not None or status_block.get("status_str") == "error":
        return "error"
    if status_block.get("completed") or status_block.get("status_str") == "success":
        return "success"
    return "unknown"


def _error_text(error_details: dict[str, Any] | None, interrupted: bool) -> str | None:
    if error_details is not None:
        return (
            f"{error_details.get('node_id')} ({error_details.get('node_type')}): "
            f"{error_details.get('exception_type')}: {str(error_details.get('exception_message', '')).strip()}"
        )
    if interrupted:
        return "interrupted"
    return None
