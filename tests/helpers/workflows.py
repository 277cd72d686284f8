"""The shipped workflows in tests: read them, make them tiny, and check UI files against /object_info.

``ui_problems`` is written from the frontend's rules (COMFY_API.md section 11) independently of
tools/workflow_format.py, so a mistake in the converter shows up as a disagreement here.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS_DIR = REPO_ROOT / "workflows"
TINY_CKPT = "tiny_sd15.safetensors"

# Combos listing the user's model files or folders (with the ending a name must have): a shipped
# workflow names a model the test server lacks.
MODEL_FILE_COMBOS = {
    ("CheckpointLoaderSimple", "ckpt_name"): ".safetensors",
    ("TestLoRAStrengthSweep", "lora_name"): ".safetensors",
    ("CompareLoRAStack", "lora_name"): ".safetensors",
    ("AutoCaption", "tagger"): "",
    ("AutoCaption", "caption_model"): "",
}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def workflow_names() -> list[str]:
    return sorted(path.stem for path in WORKFLOWS_DIR.glob("*.json"))


def api_workflow_names() -> list[str]:
    return sorted(path.stem for path in (WORKFLOWS_DIR / "api").glob("*.json"))


def load_ui(name: str) -> dict[str, Any]:
    return json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())


def load_api(name: str) -> dict[str, Any]:
    return json.loads((WORKFLOWS_DIR / "api" / f"{name}.json").read_text())


def set_inputs(api: dict[str, Any], class_type: str, **values: Any) -> dict[str, Any]:
    """Set widget values on the one node of this type; every name must be an input it already has."""
    matches = [node for node in api.values() if node["class_type"] == class_type]
    assert len(matches) == 1, f"expected one {class_type} node, found {len(matches)}"
    unknown = set(values) - set(matches[0]["inputs"])
    assert not unknown, f"{class_type} has no inputs {sorted(unknown)}: was a widget renamed?"
    matches[0]["inputs"].update(values)
    return api


def tiny_variant(api: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A copy of an API graph with ``{class_type: {input: value}}`` applied."""
    api = copy.deepcopy(api)
    for class_type, values in overrides.items():
        set_inputs(api, class_type, **values)
    return api


# -- UI checks ---------------------------------------------------------------------------------


def _spec(node_info: dict[str, Any], name: str) -> tuple[str, dict[str, Any], list[Any] | None] | None:
    for section in ("required", "optional"):
        raw = node_info["input"].get(section, {}).get(name)
        if raw is not None:
            options = raw[1] if len(raw) > 1 and isinstance(raw[1], dict) else {}
            if isinstance(raw[0], list):
                return "COMBO", options, raw[0]
            return raw[0], options, options.get("options") if raw[0] == "COMBO" else None
    return None


def _widget_names(node_info: dict[str, Any]) -> list[str]:
    order = node_info["input_order"]
    names = order.get("required", []) + order.get("optional", [])
    widgets = []
    for name in names:
        kind, options, _ = _spec(node_info, name)  # type: ignore[misc]
        if kind in WIDGET_TYPES and not options.get("forceInput"):
            widgets.append(name)
    return widgets


def _value_problem(class_type: str, name: str, value: Any, node_info: dict[str, Any]) -> str | None:
    kind, options, choices = _spec(node_info, name)  # type: ignore[misc]
    if kind == "INT" or kind == "FLOAT":
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (kind == "INT" and not isinstance(value, int))
        ):
            return f"{name}={value!r} is not an {kind}"
        if "min" in options and value < options["min"] or "max" in options and value > options["max"]:
            return f"{name}={value!r} is outside {options.get('min')}..{options.get('max')}"
    elif kind == "STRING" and not isinstance(value, str):
        return f"{name}={value!r} is not a string"
    elif kind == "BOOLEAN" and not isinstance(value, bool):
        return f"{name}={value!r} is not a boolean"
    elif kind == "COMBO" and value not in (choices or []):
        ending = MODEL_FILE_COMBOS.get((class_type, name))
        if ending is not None and isinstance(value, str) and value and value.endswith(ending):
            return None  # the user's own model file
        return f"{name}={value!r} is not one of its options"
    return None


def _control_count(name: str, kind: str, options: dict[str, Any]) -> int:
    flag = options.get("control_after_generate")
    if kind == "INT" and (flag or (flag is None and name in ("seed", "noise_seed"))):
        return 1
    return 2 if kind == "COMBO" and flag else 0


def _types_match(source: str, target: str) -> bool:
    if "*" in (source, target):
        return True
    return bool(set(source.split(",")) & set(target.split(",")))


def ui_problems(ui: dict[str, Any], object_info: dict[str, Any]) -> list[str]:
    """What the canvas or the queue would trip on: unknown node types, widget values that do not fit
    their inputs, links between mismatched types or dangling ends, required inputs left open."""
    problems = []
    if ui.get("version") != 0.4:
        problems.append(f"version is {ui.get('version')!r}, not 0.4")
    nodes = {node["id"]: node for node in ui["nodes"]}
    links = {link[0]: link for link in ui["links"]}
    if len(nodes) != len(ui["nodes"]) or len(links) != len(ui["links"]):
        problems.append("node or link ids are not unique")
    if ui["last_node_id"] < max(nodes, default=0) or ui["last_link_id"] < max(links, default=0):
        problems.append("last_node_id / last_link_id below the highest id in use")

    for node in ui["nodes"]:
        where = f"node {node['id']} ({node['type']})"
        missing_keys = {"id", "type", "pos", "size", "flags", "order", "mode", "properties"} - set(node)
        if missing_keys:
            problems.append(f"{where}: no {sorted(missing_keys)}")
        info = object_info.get(node["type"])
        if info is None:
            problems.append(f"{where}: type not registered in this ComfyUI")
            continue
        problems += [f"{where}: {problem}" for problem in _widget_problems(node, info)]
        problems += [f"{where}: {problem}" for problem in _socket_problems(node, info, links)]

    for link in ui["links"]:
        problems += [f"link {link[0]}: {problem}" for problem in _link_problems(link, nodes, object_info)]
    return problems


def _widget_problems(node: dict[str, Any], info: dict[str, Any]) -> list[str]:
    """A node's widget values against its widgets: one value each, fitting it, control values after."""
    problems = []
    values = list(node.get("widgets_values") or [])
    position = 0
    for name in _widget_names(info):
        if position >= len(values):
            problems.append(f"no value for widget {name!r}")
            break
        problem = _value_problem(node["type"], name, values[position], info)
        if problem:
            problems.append(problem)
        kind, options, _ = _spec(info, name)  # type: ignore[misc]
        controls = _control_count(name, kind, options)
        if controls and (position + 1 >= len(values) or values[position + 1] not in CONTROL_VALUES):
            problems.append(f"{name} needs a control value, one of {sorted(CONTROL_VALUES)}")
        position += 1 + controls
    if position != len(values):
        problems.append(f"{len(values)} widget values for widgets that take {position}")
    return problems


def _socket_problems(node: dict[str, Any], info: dict[str, Any], links: dict[int, list[Any]]) -> list[str]:
    """A node's inputs and outputs: known names, links that end here, required sockets connected."""
    problems = []
    inputs = node.get("inputs") or []
    connected = set()
    for slot, entry in enumerate(inputs):
        spec = _spec(info, entry["name"])
        if spec is None:
            problems.append(f"input {entry['name']!r} is not one of the node's inputs")
            continue
        if entry.get("link") is None:
            continue
        link = links.get(entry["link"])
        if link is None or link[3] != node["id"] or link[4] != slot:
            problems.append(f"input {entry['name']!r} names link {entry['link']}, which does not end here")
            continue
        connected.add(entry["name"])
    for name in info["input"].get("required", {}):
        kind, options, _ = _spec(info, name)  # type: ignore[misc]
        is_socket = kind not in WIDGET_TYPES or options.get("forceInput")
        if is_socket and name not in connected:
            problems.append(f"required input {name!r} is not connected")
    for slot, entry in enumerate(node.get("outputs") or []):
        if slot >= len(info["output"]) or entry["type"] != info["output"][slot]:
            problems.append(
                f"output {slot} is {entry['type']!r}, the node gives {info['output'][slot : slot + 1]}"
            )
    return problems


def _link_problems(link: list[Any], nodes: dict[int, dict[str, Any]], object_info: dict[str, Any]) -> list[str]:
    """One link: both ends there, typed as its output, listed by it, into an input that takes it."""
    link_id, source, source_slot, target, target_slot, kind = link
    problems = []
    if source not in nodes or target not in nodes:
        return [f"from node {source} to node {target}, one of which is missing"]
    source_info, target_info = (
        object_info.get(nodes[source]["type"]),
        object_info.get(nodes[target]["type"]),
    )
    if source_info is None or target_info is None:
        return []  # reported with the node
    if source_slot >= len(source_info["output"]):
        return [f"node {source} has no output {source_slot}"]
    output_type = source_info["output"][source_slot]
    if kind != output_type:
        problems.append(f"typed {kind!r}, the output gives {output_type!r}")
    if link_id not in (nodes[source]["outputs"][source_slot].get("links") or []):
        problems.append(f"node {source}'s output {source_slot} does not list it")
    target_inputs = nodes[target].get("inputs") or []
    if target_slot >= len(target_inputs):
        problems.append(f"node {target} has no input slot {target_slot}")
        return problems
    name = target_inputs[target_slot]["name"]
    spec = _spec(target_info, name)
    if spec is not None and not _types_match(output_type, spec[0]):
        problems.append(f"{output_type} into {nodes[target]['type']}.{name}, which takes {spec[0]}")
    return problems


def declared_inputs_only(api: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """The graph without inputs its nodes do not declare: the frontend also sends the values of its
    own display widgets (e.g. Preview as Text's "preview"), which the server ignores."""
    api = copy.deepcopy(api)
    for node in api.values():
        info = object_info[node["class_type"]]["input"]
        declared = set(info.get("required", {})) | set(info.get("optional", {}))
        node["inputs"] = {name: value for name, value in node["inputs"].items() if name in declared}
    return api


# -- the tiny model ----------------------------------------------------------------------------

TINY_DATASET = "workflows_rings"  # in the server's input folder (make_tiny_dataset)
TINY_UNCAPTIONED = "workflows_uncaptioned"  # make_uncaptioned_dataset
TINY_TAGGER = "tiny_tagger"  # in models/captioners (make_tiny_tagger)
TINY_SAVED_LORA = "tests/workflows_lora"
TINY_OTHER_LORA = "tests/workflows_other_lora"  # a copy of TINY_SAVED_LORA, to stack with it
_TINY_SWEEP = {
    "width": 64,
    "height": 64,
    "steps": 2,
    "strengths": "0.5, 1.0",
    "prompts": "{trigger}, a yellow ring",
}
# What each shipped workflow needs changed to run on the tiny SD1.5 test model in seconds.
TINY_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    # Runs as shipped, on the toy (install_toy_workflow_inputs): tests/integration/test_toy_lora.py.
    "train_then_test": {},
    "train_then_test_sd15": {
        "CheckpointLoaderSimple": {"ckpt_name": TINY_CKPT},
        "LoadDataset": {"folder": TINY_DATASET, "resolution": 64, "trigger_word": "sks"},
        "TrainLoRA": {"steps": 8, "rank": 4, "alpha": 4.0, "learning_rate": 1e-3},
        "SaveCheckpoint": {"filename": TINY_SAVED_LORA, "if_exists": "overwrite"},
        "TestLoRAStrengthSweep": _TINY_SWEEP,
    },
    "test_existing_lora": {
        "CheckpointLoaderSimple": {"ckpt_name": TINY_CKPT},
        "TestLoRAStrengthSweep": {**_TINY_SWEEP, "lora_name": f"{TINY_SAVED_LORA}.safetensors"},
    },
    "stacked_comparison": {
        "CheckpointLoaderSimple": {"ckpt_name": TINY_CKPT},
        "CompareLoRAStack": {
            **{key: value for key, value in _TINY_SWEEP.items() if key != "strengths"},
            "lora_name": f"{TINY_SAVED_LORA}.safetensors",
            "other_loras": f"{TINY_OTHER_LORA}.safetensors: 0.8",
        },
    },
    "caption_only": {
        "LoadDataset": {"folder": TINY_UNCAPTIONED, "resolution": 64},
        "AutoCaption": {"tagger": TINY_TAGGER},
    },
}


def make_uncaptioned_dataset(input_dir: Path) -> Path:
    """Three 64 px images without captions, made afresh (captioning writes .txt files into it)."""
    folder = input_dir / TINY_UNCAPTIONED
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for stem, colour in (("red", (255, 0, 0)), ("green", (0, 255, 0)), ("blue", (0, 0, 255))):
        Image.new("RGB", (64, 64), colour).save(folder / f"{stem}.png")
    return folder


def make_tiny_tagger(models_dir: Path) -> Path:
    """The tiny WD14-style tagger of tools/tiny_captioners.py in models/captioners (kept if present)."""
    from tools.tiny_captioners import build_tiny_tagger

    folder = models_dir / "captioners" / TINY_TAGGER
    if not (folder / "model.onnx").is_file():
        build_tiny_tagger(folder)
    return folder


def make_tiny_dataset(input_dir: Path) -> Path:
    """Four 64 px yellow rings captioned "sks, ..." in the server's input folder (kept if present)."""
    from tools.synthetic_dataset import make_shapes_dataset

    folder = input_dir / TINY_DATASET
    if not folder.is_dir():
        make_shapes_dataset(folder, count=4, size=64, shape="ring", trigger_word="sks")
    return folder


def node_id(api: dict[str, Any], title: str) -> str:
    """The id of the node with this title (``_meta.title``)."""
    found = [key for key, node in api.items() if node.get("_meta", {}).get("title") == title]
    assert len(found) == 1, f"expected one node titled {title!r}, found {found}"
    return found[0]
