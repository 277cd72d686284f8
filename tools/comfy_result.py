"""What one prompt did: ComfyUI's websocket events and /history entry folded into a RunResult."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ComfyServerError(RuntimeError):
    """The server could not be started, died, did not answer as expected, or a prompt failed."""


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

    # History holds the same messages, so errors are reported even if the websocket missed them.
    status_block = history.get("status", {})
    for kind, data in status_block.get("messages", []):
        if kind == "execution_error" and error_details is None:
            error_details = data
        elif kind == "execution_interrupted":
            interrupted = True

    if interrupted:
        status = "interrupted"
    elif error_details is not None or status_block.get("status_str") == "error":
        status = "error"
    elif status_block.get("completed") or status_block.get("status_str") == "success":
        status = "success"
    else:
        status = "unknown"

    error = None
    if error_details is not None:
        error = (
            f"{error_details.get('node_id')} ({error_details.get('node_type')}): "
            f"{error_details.get('exception_type')}: {str(error_details.get('exception_message', '')).strip()}"
        )
    elif interrupted:
        error = "interrupted"

    return RunResult(
        prompt_id=prompt_id,
        status=status,
        outputs=history.get("outputs", {}),
        node_seconds=node_seconds,
        cached_nodes=cached,
        progress=progress,
        seconds=end - start,
        error=error,
        error_details=error_details,
        history=history,
    )
