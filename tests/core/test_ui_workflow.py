"""A canvas (UI) workflow becomes the API graph the frontend would queue, for the headless runner: Reroutes
pass their input on, a PrimitiveNode's value is the one stored in the widget it feeds, muted nodes and (on
request) unknown ones are left out, bypassed nodes are refused with the fix."""

from __future__ import annotations

import pytest

from headless.node_inputs import WorkflowFormatError
from headless.ui_workflow import is_ui_workflow, ui_to_api

OBJECT_INFO = {
    "Loader": {"input": {"required": {"name": ["STRING", {}]}}, "input_order": {"required": ["name"]},
               "output": ["MODEL"], "name": "Loader", "display_name": "Loader"},
    "Trainer": {"input": {"required": {"model": ["MODEL", {}], "steps": ["INT", {"default": 1}]}},
                "input_order": {"required": ["model", "steps"]}, "output": ["LORA"], "name": "Trainer",
                "display_name": "Trainer"},
}


def _node(node_id, kind, widgets=None, inputs=None, mode=0):
    return {"id": node_id, "type": kind, "mode": mode, "widgets_values": widgets or [], "inputs": inputs or []}


def canvas(trainer_mode=0, extra=()):
    """Loader -> Reroute -> Trainer.model; PrimitiveNode -> Trainer.steps (widget converted to an input)."""
    return {
        "nodes": [
            _node(1, "Loader", ["model.safetensors"]),
            _node(2, "Reroute", inputs=[{"name": "", "type": "*", "link": 1}]),
            _node(3, "PrimitiveNode", [25, "fixed"]),
            _node(4, "Trainer", [25], [{"name": "model", "type": "MODEL", "link": 2},
                                       {"name": "steps", "type": "INT", "link": 3, "widget": {"name": "steps"}}],
                  mode=trainer_mode),
            *extra,
        ],
        "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 4, 0, "MODEL"], [3, 3, 0, 4, 1, "INT"],
                  [4, 4, 0, 5, 0, "LORA"]],
    }


def test_reroutes_and_primitive_nodes_resolve_as_the_frontend_resolves_them():
    ui = canvas()
    assert is_ui_workflow(ui) and not is_ui_workflow({"1": {"class_type": "Loader", "inputs": {}}})
    api = ui_to_api(ui, OBJECT_INFO)
    assert {key: node["inputs"] for key, node in api.items()} == {
        "1": {"name": "model.safetensors"}, "4": {"model": ["1", 0], "steps": 25}}


def test_unknown_nodes_are_left_out_only_when_asked():
    ui = canvas(extra=[_node(5, "SomePreview", inputs=[{"name": "lora", "type": "LORA", "link": 4}])])
    with pytest.raises(WorkflowFormatError, match="SomePreview"):
        ui_to_api(ui, OBJECT_INFO)
    assert sorted(ui_to_api(ui, OBJECT_INFO, skip_unknown=True)) == ["1", "4"]


def test_muted_nodes_are_left_out_and_bypassed_ones_refused_with_the_fix():
    assert sorted(ui_to_api(canvas(trainer_mode=2), OBJECT_INFO)) == ["1"]
    with pytest.raises(WorkflowFormatError, match=r"node 4 \(Trainer\) is bypassed.*Ctrl\+B"):
        ui_to_api(canvas(trainer_mode=4), OBJECT_INFO)


def _appended(optional: dict) -> dict:
    return {**OBJECT_INFO, "Trainer": {
        "input": {"required": {"model": ["MODEL", {}], "steps": ["INT", {"default": 1}]}, "optional": optional},
        "input_order": {"required": ["model", "steps"], "optional": list(optional)},
        "output": ["LORA"], "name": "Trainer", "display_name": "Trainer"}}


def test_a_workflow_saved_before_a_widget_was_appended_gets_its_default_as_the_canvas_gives_it():
    info = _appended({"validate_every": ["INT", {"default": 50}]})
    saved = {"nodes": [_node(1, "Loader", ["model.safetensors"]),
                       _node(4, "Trainer", [7, 9], [{"name": "model", "type": "MODEL", "link": 1}])],
             "links": [[1, 1, 0, 4, 0, "MODEL"]]}
    assert ui_to_api(saved, info)["4"]["inputs"]["validate_every"] == 9
    saved["nodes"][1]["widgets_values"] = [7]  # saved before validate_every existed
    inputs = ui_to_api(saved, info)["4"]["inputs"]
    assert inputs["steps"] == 7 and inputs["validate_every"] == 50
    with pytest.raises(WorkflowFormatError, match="too few for 'label'"):  # no default to fall back on
        ui_to_api(saved, _appended({"label": ["STRING", {}]}))
