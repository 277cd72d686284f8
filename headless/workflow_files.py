"""What to train, read from a file: a workflow saved from the canvas (UI format), its API form ("Export
(API)"), or a small TOML file whose sections hold the nodes' values:

    checkpoint = "my_model.safetensors"      # Load Checkpoint's ckpt_name
    [dataset]   Load Dataset's inputs        (folder = "my_dataset", resolution = 512, ...)
    [train]     Train LoRA's inputs and those of its settings nodes (steps, rank, save_every, resume, ...)
    [save]      Save LoRA's inputs           (filename, if_exists)
    [grid]      Test LoRA Strength Sweep's inputs; the section (even empty) asks for the grid

Every value left out is the node's own default, read from its definition: the file and the canvas agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import HeadlessError
from .node_inputs import WorkflowFormatError, default_inputs, widget_specs
from .ui_workflow import is_ui_workflow, ui_to_api

CHECKPOINT_LOADER = "CheckpointLoaderSimple"
TRAIN_LORA = "TrainLoRA"
# TOML section -> node class; node ids in the graph are the section names.
SECTIONS = {"dataset": "LoadDataset", "train": TRAIN_LORA, "save": "SaveCheckpoint", "grid": "TestLoRAStrengthSweep"}
TOP_LEVEL_KEYS = ("checkpoint", *SECTIONS)


def read_workflow(path: Path, object_info: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The API graph in ``path`` and, for a canvas file, the UI workflow it came from."""
    if not path.is_file():
        raise HeadlessError(f"{path}: no such file. Give a workflow saved from the canvas (.json) or a .toml config.")
    if path.suffix.lower() == ".toml":
        return toml_to_api(_read_toml(path), object_info, path.name), None
    try:
        workflow = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HeadlessError(f"{path}: not a JSON workflow ({error}). Save the workflow from the canvas again "
                            "(Workflow > Save, or Export (API)).") from error
    if not isinstance(workflow, dict):
        raise HeadlessError(f"{path}: not a ComfyUI workflow (expected a JSON object).")
    try:
        if is_ui_workflow(workflow):
            _refuse_subgraphs(workflow, path)
            return ui_to_api(workflow, object_info, skip_unknown=True), workflow
    except (WorkflowFormatError, KeyError, TypeError, ValueError) as error:
        raise HeadlessError(f"{path}: the canvas workflow cannot be read: {error}") from error
    if not all(isinstance(node, dict) and "class_type" in node for node in workflow.values()):
        raise HeadlessError(f"{path}: not a ComfyUI workflow: expected the canvas format (with 'nodes') or the "
                            "API format (node ids mapping to class_type and inputs).")
    return workflow, None


def _refuse_subgraphs(workflow: dict[str, Any], path: Path) -> None:
    subgraphs = {graph.get("id") for graph in (workflow.get("definitions") or {}).get("subgraphs") or []}
    used = [node for node in workflow["nodes"] if node.get("type") in subgraphs]
    if used:
        raise HeadlessError(
            f"{path}: node {used[0]['id']} is a subgraph, which the headless runner cannot open. Unpack it in the "
            "canvas (right-click > Unpack Subgraph) and save the workflow again."
        )


def named_node_types(path: Path) -> set[str]:
    """The node types a workflow file names (none for a TOML config, whose nodes are LoRA Lab's and the loader)."""
    if path.suffix.lower() == ".toml" or not path.is_file():
        return set()
    try:
        workflow = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return set()  # read_workflow says what is wrong with it
    if not isinstance(workflow, dict):
        return set()
    if is_ui_workflow(workflow):
        return {str(node.get("type")) for node in workflow["nodes"] if isinstance(node, dict)}
    return {str(node.get("class_type")) for node in workflow.values() if isinstance(node, dict)}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError as error:
            raise HeadlessError("Reading a .toml config on Python 3.10 needs tomli: pip install tomli "
                                "(or use a workflow .json).") from error
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise HeadlessError(f"{path}: not valid TOML: {error}") from error


def settings_hosts(object_info: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Input name -> (settings node class, Train LoRA input it connects to), for the inputs Train LoRA takes
    through its settings nodes: the nodes whose only output has the type of one of its optional inputs."""
    optional = object_info[TRAIN_LORA]["input"].get("optional", {})
    socket_of_type = {spec[0]: name for name, spec in optional.items()}
    hosts: dict[str, tuple[str, str]] = {}
    for class_type, info in object_info.items():
        outputs = info.get("output", [])
        if len(outputs) == 1 and outputs[0] in socket_of_type:
            for spec in widget_specs(info):
                hosts[spec.name] = (class_type, socket_of_type[outputs[0]])
    return hosts


def _check_keys(where: str, given: dict[str, Any], valid: list[str], file_name: str) -> None:
    unknown = [key for key in given if key not in valid]
    if unknown:
        raise HeadlessError(
            f"{file_name}: {where} has no key {', '.join(repr(key) for key in unknown)}. "
            f"Valid keys: {', '.join(valid)}."
        )


def toml_to_api(config: dict[str, Any], object_info: dict[str, Any], file_name: str) -> dict[str, Any]:
    """The API graph of a TOML config (see the module docstring); unknown keys are refused by name."""
    _check_keys("the top level", config, list(TOP_LEVEL_KEYS), file_name)
    for section in SECTIONS:
        if section in config and not isinstance(config[section], dict):
            raise HeadlessError(f"{file_name}: '{section}' must be a section ([{section}]), not a value.")
    hosts = settings_hosts(object_info)
    valid = {section: [spec.name for spec in widget_specs(object_info[cls])] for section, cls in SECTIONS.items()}
    valid["train"] += [name for name in hosts if name not in valid["train"]]
    for section in SECTIONS:
        _check_keys(f"[{section}]", config.get(section, {}), valid[section], file_name)

    def node(section: str, values: dict[str, Any], **links: Any) -> dict[str, Any]:
        class_type = SECTIONS.get(section, section)
        inputs = {**default_inputs(object_info[class_type]), **values, **links}
        return {"class_type": class_type, "inputs": inputs, "_meta": {"title": f"[{section}] in {file_name}"}}

    model = {"model": ["checkpoint", 0], "clip": ["checkpoint", 1], "vae": ["checkpoint", 2]}
    api: dict[str, Any] = {
        "checkpoint": {"class_type": CHECKPOINT_LOADER, "inputs": {"ckpt_name": config.get("checkpoint", "")},
                       "_meta": {"title": f"checkpoint in {file_name}"}},
        "dataset": node("dataset", config.get("dataset", {})),
    }
    train_widgets = {spec.name for spec in widget_specs(object_info[TRAIN_LORA])}
    own: dict[str, Any] = {}
    routed: dict[tuple[str, str], dict[str, Any]] = {}
    for name, value in config.get("train", {}).items():
        if name in train_widgets:
            own[name] = value
        else:  # a settings node's input: that node is added and wired in
            routed.setdefault(hosts[name], {})[name] = value
    for (class_type, socket), values in routed.items():
        api[socket] = node(class_type, values)
        api[socket]["_meta"]["title"] = f"[train] {socket} in {file_name}"
        own[socket] = [socket, 0]
    api["train"] = node("train", own, **model, dataset=["dataset", 0])
    api["save"] = node("save", config.get("save", {}), lora=["train", 0])
    if "grid" in config:
        api["grid"] = node("grid", config["grid"], **model, lora=["save", 0])
    return api
