"""Runs the nodes training needs through their own classes, as ComfyUI's executor would: each node once,
its linked inputs from the outputs they come from, its hidden inputs (node id, the prompt, the workflow),
under ``torch.inference_mode()`` like every node in ComfyUI. Nodes nothing asked for (previews, notes) do
not run.
"""

from __future__ import annotations

from typing import Any

from .errors import HeadlessError
from .node_inputs import is_link
from .ui_workflow import without_meta

# What a node that stops with one of these says is meant for the person who set it up (ComfyUI shows it
# on the node); anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, RuntimeError, MemoryError, ImportError)


class NodeFailed(HeadlessError):
    """A node stopped with a message for the user; the command exits with status 1."""


def title(api: dict[str, Any], node_id: str) -> str:
    node = api[node_id]
    name = node.get("_meta", {}).get("title") or node["class_type"]
    return f"{name} (node {node_id}, {node['class_type']})"


def needed_nodes(api: dict[str, Any], targets: list[str]) -> list[str]:
    """``targets`` and every node they draw on, sources first."""
    order: list[str] = []

    def visit(node_id: str, path: tuple[str, ...]) -> None:
        if node_id in order:
            return
        if node_id in path:
            raise HeadlessError(f"the workflow has a cycle through {title(api, node_id)}")
        for name, value in api[node_id]["inputs"].items():
            if is_link(value):
                if value[0] not in api:
                    raise HeadlessError(f"{title(api, node_id)}: input {name!r} is linked to node {value[0]}, "
                                        "which is not in the workflow (or is muted there). Connect it again.")
                visit(value[0], (*path, node_id))
        order.append(node_id)

    for target in targets:
        visit(target, ())
    return order


class NodeRunner:
    """Runs nodes of ``api`` on demand and keeps their outputs."""

    def __init__(self, api: dict[str, Any], classes: dict[str, Any], workflow: dict[str, Any] | None = None):
        self.api, self.classes = api, classes
        self.hidden = {"PROMPT": without_meta(api), "EXTRA_PNGINFO": {"workflow": workflow} if workflow else None}
        self.results: dict[str, tuple[Any, ...]] = {}
        self.ui: dict[str, Any] = {}  # what each V3 node showed (the sweep: its saved grid)

    def outputs(self, node_id: str) -> tuple[Any, ...]:
        if node_id not in self.results:
            self.results[node_id] = self._run(node_id)
        return self.results[node_id]

    def _inputs(self, node_id: str) -> dict[str, Any]:
        inputs: dict[str, Any] = {}
        for name, value in self.api[node_id]["inputs"].items():
            if is_link(value):
                inputs[name] = self.outputs(value[0])[value[1]]
            elif isinstance(value, dict) and "__value__" in value:
                inputs[name] = value["__value__"]
            else:
                inputs[name] = value
        return inputs

    def _run(self, node_id: str) -> tuple[Any, ...]:
        from comfy_api.internal import _ComfyNodeInternal

        node_class = self.classes[self.api[node_id]["class_type"]]
        inputs = self._inputs(node_id)
        try:
            if issubclass(node_class, _ComfyNodeInternal):
                clone = node_class.PREPARE_CLASS_CLONE({**self.hidden, "UNIQUE_ID": node_id})
                output = clone.EXECUTE_NORMALIZED(**inputs)
                self.ui[node_id] = output.ui
                return tuple(output.args)
            result = getattr(node_class(), node_class.FUNCTION)(**inputs)
        except USER_ERRORS as error:
            raise NodeFailed(f"{title(self.api, node_id)}: {error}") from error
        return tuple(result["result"] if isinstance(result, dict) else result)
