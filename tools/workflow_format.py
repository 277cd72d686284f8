"""Convert ComfyUI workflows between the API format (what ``POST /prompt`` runs) and the UI format
(what the canvas loads by drag and drop), using the node definitions from ``/object_info``.

    ui = api_to_ui(api_graph, object_info)       # lays nodes out in left-to-right columns
    api = ui_to_api(ui, object_info)             # what the frontend's graphToPrompt() would send

API nodes may carry ``"_meta": {"title": ...}`` (as the frontend's "Export (API)" writes); it
becomes the UI node's title. The widget rules (which inputs are widgets, and the control values
saved after some) are read from the node definitions in ``headless/node_inputs.py``; ``ui_to_api``
lives in ``headless/ui_workflow.py``, which the headless runner uses too.
"""

from __future__ import annotations

import uuid
from typing import Any

from headless.node_inputs import (
    OPTIONAL_SOCKET_SHAPE,
    WorkflowFormatError,
    default_inputs,
    display_name,
    input_specs,
    is_link,
    node_info,
    widget_specs,
)
from headless.ui_workflow import ui_to_api, without_meta

__all__ = [
    "WorkflowFormatError",
    "api_to_ui",
    "default_inputs",
    "display_name",
    "estimate_size",
    "input_specs",
    "ui_to_api",
    "widget_specs",
    "without_meta",
]

# Layout, in canvas pixels. The frontend draws a node's title bar above its ``pos``.
TITLE_HEIGHT = 30
SLOT_HEIGHT = 20
WIDGET_HEIGHT = 24
MULTILINE_HEIGHT = 80
COLUMN_GAP = 60
ROW_GAP = 60 + TITLE_HEIGHT


# -- API -> UI ---------------------------------------------------------------------------------


def _execution_order(api: dict[str, Any]) -> list[str]:
    """Node ids sorted so that every node comes after its sources (ties by numeric id)."""
    sources = {
        node_id: {value[0] for value in node["inputs"].values() if is_link(value)}
        for node_id, node in api.items()
    }
    done: list[str] = []
    pending = sorted(api, key=_id_key)
    while pending:
        ready = [node_id for node_id in pending if sources[node_id] <= set(done)]
        if not ready:
            raise WorkflowFormatError(f"the graph has a cycle or a link to a missing node among {pending}")
        done.append(ready[0])
        pending.remove(ready[0])
    return done


def _id_key(node_id: str) -> tuple[int, str]:
    return (int(node_id), node_id) if node_id.isdigit() else (1 << 30, node_id)


def _columns(api: dict[str, Any], order: list[str]) -> dict[str, int]:
    """Each node's column: one more than its furthest source, so links run left to right."""
    column: dict[str, int] = {}
    for node_id in order:
        linked = [column[value[0]] + 1 for value in api[node_id]["inputs"].values() if is_link(value)]
        column[node_id] = max(linked, default=0)
    return column


def estimate_size(node_info: dict[str, Any]) -> list[int]:
    """A size that shows every socket and widget (the frontend's own layout is a little tighter)."""
    specs = input_specs(node_info)
    sockets = sum(not spec.is_widget for spec in specs)
    rows = max(sockets, len(node_info.get("output", [])))
    widgets = [spec for spec in specs if spec.is_widget]
    height = rows * SLOT_HEIGHT + 10
    for spec in widgets:
        height += MULTILINE_HEIGHT if spec.is_multiline else WIDGET_HEIGHT * (1 + spec.control_values)
    width = 400 if any(spec.is_multiline for spec in widgets) else 320
    return [width, max(height, 60)]


def api_to_ui(
    api: dict[str, Any],
    object_info: dict[str, Any],
    *,
    sizes: dict[str, list[int]] | None = None,
    workflow_id: str | None = None,
) -> dict[str, Any]:
    """The UI workflow for an API graph: same nodes and ids, links from the linked inputs, widget
    values in the frontend's order (control values "fixed", so a queued workflow repeats itself),
    nodes in left-to-right columns by link depth. ``sizes`` sets some nodes' sizes (e.g. image
    previews); the others are estimated from their sockets and widgets."""
    order = _execution_order(api)
    sizes = {
        node_id: list(
            (sizes or {}).get(node_id)
            or estimate_size(node_info(object_info, api[node_id]["class_type"], node_id))
        )
        for node_id in api
    }
    positions = _positions(api, _columns(api, order), sizes)
    links, outputs_links, input_links = _links(api, order, object_info)

    link_by_id = {link[0]: link for link in links}
    nodes: list[dict[str, Any]] = []
    for rank, node_id in enumerate(order):
        node = api[node_id]
        info = object_info[node["class_type"]]
        ui_inputs = _ui_inputs(node_id, node, info, input_links, link_by_id)
        widgets_values = _widgets_values(node_id, node, info, input_links)
        ui_outputs = _ui_outputs(node_id, info, outputs_links)
        ui_node: dict[str, Any] = {"id": int(node_id), "type": node["class_type"]}
        title = node.get("_meta", {}).get("title")
        if title and title != display_name(info):
            ui_node["title"] = title
        ui_node.update(
            {
                "pos": positions[node_id],
                "size": sizes[node_id],
                "flags": {},
                "order": rank,
                "mode": 0,
                "inputs": ui_inputs,
                "outputs": ui_outputs,
                "properties": {"Node name for S&R": node["class_type"]},
            }
        )
        if widgets_values:
            ui_node["widgets_values"] = widgets_values
        nodes.append(ui_node)

    nodes.sort(key=lambda ui_node: ui_node["id"])
    return {
        "id": workflow_id or str(uuid.uuid4()),
        "revision": 0,
        "last_node_id": max(int(node_id) for node_id in api),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": _first_view(positions, sizes)},
        "version": 0.4,
    }


def _positions(api: dict[str, Any], column_of: dict[str, int], sizes: dict[str, list[int]]) -> dict[str, list[int]]:
    """Columns as wide as their widest node; nodes stacked in id order within a column."""
    column_ids: dict[int, list[str]] = {}
    for node_id in sorted(api, key=_id_key):
        column_ids.setdefault(column_of[node_id], []).append(node_id)
    positions: dict[str, list[int]] = {}
    x = 0
    for column in sorted(column_ids):
        y = 0
        for node_id in column_ids[column]:
            positions[node_id] = [x, y]
            y += sizes[node_id][1] + ROW_GAP
        x += max(sizes[node_id][0] for node_id in column_ids[column]) + COLUMN_GAP
    return positions


def _links(
    api: dict[str, Any], order: list[str], object_info: dict[str, Any]
) -> tuple[list[list[Any]], dict[tuple[str, int], list[int]], dict[tuple[str, str], int]]:
    """The UI links (target slots filled in later), each output's link ids and each linked input's."""
    links: list[list[Any]] = []
    outputs_links: dict[tuple[str, int], list[int]] = {}
    input_links: dict[tuple[str, str], int] = {}
    for node_id in order:  # link ids follow execution order, like a canvas built by hand
        node = api[node_id]
        info = node_info(object_info, node["class_type"], node_id)
        specs = {spec.name: spec for spec in input_specs(info)}
        for name, value in node["inputs"].items():
            if not is_link(value):
                continue
            source_id, slot = value
            if source_id not in api:
                raise WorkflowFormatError(f"node {node_id}.{name}: links to missing node {source_id}")
            source_info = node_info(object_info, api[source_id]["class_type"], source_id)
            if slot >= len(source_info["output"]):
                raise WorkflowFormatError(f"node {node_id}.{name}: node {source_id} has no output {slot}")
            if name not in specs:
                raise WorkflowFormatError(f"node {node_id} ({node['class_type']}): no input named {name!r}")
            link_id = len(links) + 1
            links.append([link_id, int(source_id), slot, int(node_id), None, source_info["output"][slot]])
            outputs_links.setdefault((source_id, slot), []).append(link_id)
            input_links[(node_id, name)] = link_id
    return links, outputs_links, input_links


def _ui_inputs(
    node_id: str,
    node: dict[str, Any],
    info: dict[str, Any],
    input_links: dict[tuple[str, str], int],
    link_by_id: dict[int, list[Any]],
) -> list[dict[str, Any]]:
    """The node's UI inputs; each link into the node gets its target slot here."""
    specs = input_specs(info)
    unknown = set(node["inputs"]) - {spec.name for spec in specs}
    if unknown:
        raise WorkflowFormatError(
            f"node {node_id} ({node['class_type']}): no inputs named {sorted(unknown)}"
        )
    ui_inputs: list[dict[str, Any]] = []
    # The frontend lists socket inputs first, then one input per widget (to convert it to a socket).
    for spec in [s for s in specs if not s.is_widget] + [s for s in specs if s.is_widget]:
        entry: dict[str, Any] = {"localized_name": spec.name, "name": spec.name, "type": spec.type}
        if spec.optional and not spec.is_widget:
            entry["shape"] = OPTIONAL_SOCKET_SHAPE
        if spec.is_widget:
            entry["widget"] = {"name": spec.name}
        link_id = input_links.get((node_id, spec.name))
        entry["link"] = link_id
        if link_id is not None:
            link_by_id[link_id][4] = len(ui_inputs)
        elif not spec.is_widget and not spec.optional:
            raise WorkflowFormatError(
                f"node {node_id} ({node['class_type']}): required input {spec.name!r} is not linked"
            )
        ui_inputs.append(entry)
    return ui_inputs


def _widgets_values(
    node_id: str, node: dict[str, Any], info: dict[str, Any], input_links: dict[tuple[str, str], int]
) -> list[Any]:
    widgets_values: list[Any] = []
    for spec in widget_specs(info):
        if spec.name in node["inputs"] and not is_link(node["inputs"][spec.name]):
            value = node["inputs"][spec.name]
        elif "default" in spec.options or (node_id, spec.name) in input_links:
            value = spec.options.get("default")  # a linked widget keeps a value, unused
        else:
            raise WorkflowFormatError(
                f"node {node_id} ({node['class_type']}): widget {spec.name!r} has no value"
            )
        if isinstance(value, dict) and "__value__" in value:
            value = value["__value__"]
        widgets_values.append(value)
        if spec.control_values:
            widgets_values.append("fixed")
        if spec.control_values == 2:
            widgets_values.append("")  # the combo's filter text
    return widgets_values


def _ui_outputs(
    node_id: str, info: dict[str, Any], outputs_links: dict[tuple[str, int], list[int]]
) -> list[dict[str, Any]]:
    return [
        {"localized_name": name, "name": name, "type": kind, "links": outputs_links.get((node_id, slot))}
        for slot, (name, kind) in enumerate(
            zip(info.get("output_name", info["output"]), info["output"], strict=True)
        )
    ]


def _first_view(positions: dict[str, list[int]], sizes: dict[str, list[int]]) -> dict[str, Any]:
    """The canvas's first view: scale and offset that show the whole graph."""
    right = max(pos[0] + sizes[node_id][0] for node_id, pos in positions.items())
    bottom = max(pos[1] + sizes[node_id][1] for node_id, pos in positions.items())
    # The first view shows the whole graph in a 1920x1080 window, clear of the menus and side bar
    # (screen = (canvas + offset) * scale); below a scale of ~0.6 the canvas hides widget text.
    scale = round(min(1.0, 1760 / right, 880 / (bottom + TITLE_HEIGHT)), 2)
    return {"scale": scale, "offset": [round(90 / scale), round(130 / scale) + TITLE_HEIGHT]}
