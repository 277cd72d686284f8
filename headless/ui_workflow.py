"""A workflow saved from the canvas (UI format) as the API graph the frontend would queue.

    api = ui_to_api(ui, object_info)   # what the frontend's graphToPrompt() would send

The widget rules (which inputs are widgets, and the control values saved after some) are read from
the node definitions in ``node_inputs``. ``tools/workflow_format.py`` has the other direction.
"""

from __future__ import annotations

import copy
from typing import Any

from .node_inputs import WorkflowFormatError, display_name, node_info, widget_specs

MUTED, BYPASSED = 2, 4
# Nodes the frontend resolves before queueing: a Reroute passes its input on, a PrimitiveNode's value is
# already stored in the widget it feeds, a Note holds text.
FRONTEND_ONLY = ("Reroute", "PrimitiveNode", "Note", "MarkdownNote")


def is_ui_workflow(workflow: dict[str, Any]) -> bool:
    """A canvas file has a ``nodes`` list; an API graph maps node ids to ``{class_type, inputs}``."""
    return isinstance(workflow.get("nodes"), list)


def ui_to_api(ui: dict[str, Any], object_info: dict[str, Any], skip_unknown: bool = False) -> dict[str, Any]:
    """The API graph the frontend would queue for this UI workflow (muted nodes left out).

    Every node gets ``_meta.title`` (its title, or the node's display name), as the frontend sends.
    ``skip_unknown``: leave out nodes whose type ``object_info`` lacks (as if muted) instead of failing;
    an input linked to one is then left out too."""
    links = {link[0]: link for link in ui.get("links", [])}
    nodes = {node["id"]: node for node in ui["nodes"]}

    def left_out(node: dict[str, Any]) -> bool:
        return node.get("mode", 0) == MUTED or (skip_unknown and node["type"] not in object_info)

    api: dict[str, Any] = {}
    for node in ui["nodes"]:
        if left_out(node) or node["type"] in FRONTEND_ONLY:
            continue
        if node.get("mode", 0) == BYPASSED:
            raise WorkflowFormatError(
                f"node {node['id']} ({node['type']}) is bypassed, which is not supported here: turn bypass off "
                "(Ctrl+B) or delete the node, and save the workflow again"
            )
        info = node_info(object_info, node["type"], node["id"])
        inputs = _widget_inputs(node, info)
        for entry in node.get("inputs") or []:
            source = _source(node, entry, links, nodes)
            if source is None:
                continue
            if left_out(nodes[source[0]]) or nodes[source[0]]["type"] == "PrimitiveNode":
                if entry.get("widget") is None:  # a widget keeps the value the canvas stored for it
                    inputs.pop(entry["name"], None)
                continue
            inputs[entry["name"]] = [str(source[0]), source[1]]
        api[str(node["id"])] = {
            "inputs": inputs,
            "class_type": node["type"],
            "_meta": {"title": node.get("title") or display_name(info)},
        }
    return api


def _source(node: dict[str, Any], entry: dict[str, Any], links: dict[int, list[Any]],
            nodes: dict[int, dict[str, Any]]) -> tuple[int, int] | None:
    """The (node, output slot) an input is linked to, through any Reroutes; None when unlinked."""
    link_id = entry.get("link")
    while link_id is not None:
        if link_id not in links:
            raise WorkflowFormatError(f"node {node['id']}.{entry['name']}: link {link_id} is not in the links list")
        _, source, slot, _, _, _ = links[link_id]
        if source not in nodes:
            raise WorkflowFormatError(f"node {node['id']}.{entry['name']}: links to missing node {source}")
        if nodes[source]["type"] != "Reroute":
            return source, slot
        link_id = next((item.get("link") for item in nodes[source].get("inputs") or []), None)
    return None


def _widget_inputs(node: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    values = list(node.get("widgets_values") or [])
    inputs: dict[str, Any] = {}
    position = 0
    for spec in widget_specs(info):
        if position >= len(values):
            # Saved before this widget existed (new inputs are appended last): the canvas gives it its default.
            if "default" not in spec.options:
                raise WorkflowFormatError(
                    f"node {node['id']} ({node['type']}): {len(values)} widget values, too few for {spec.name!r}"
                )
            inputs[spec.name] = spec.options["default"]
            continue
        value = values[position]
        inputs[spec.name] = {"__value__": value} if isinstance(value, list) else value
        position += 1 + spec.control_values
    if position != len(values):
        raise WorkflowFormatError(
            f"node {node['id']} ({node['type']}): {len(values)} widget values, the node's widgets take {position}"
        )
    return inputs


def without_meta(api: dict[str, Any]) -> dict[str, Any]:
    """The graph as the server sees it: ``_meta`` (titles, layout hints) removed."""
    return {
        node_id: {k: v for k, v in node.items() if k != "_meta"}
        for node_id, node in copy.deepcopy(api).items()
    }
