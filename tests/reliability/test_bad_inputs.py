"""Bad inputs to every LoRA Lab node, sent as a client would: through POST /prompt of a real ComfyUI.

Each case changes one input of one node (wrong type, huge or negative number, empty or very long text,
Windows reserved name, '../', odd Unicode). The server must either refuse it with a message that names the
input (ComfyUI's validation, or the node's own error, never a Python stack trace or an internal error type
such as KeyError), or, where the input is a file name the node makes safe, save inside models/loras under
the safe name. Nothing may be written outside ComfyUI's own folders, and after the whole batch a normal job
still runs. The table of case -> outcome is printed in the figures.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers.training import CKPT, checkpoint_and_dataset, make_ring_dataset, train_node
from tools.comfy_server import ComfyServer, PromptRejected
from tools.graph import Graph, Link, NodeHandle
from tools.tiny_captioners import build_tiny_tagger

ESCAPE = "rel_escape"  # every traversal case names a file with this: it must not appear anywhere outside
LONG = "x" * 20_000
ODD = "\u202esks\u200b\u200d\ufeff😀"  # right-to-left override, zero-width space and joiner, BOM, emoji
SURROGATE = "\ud800"  # a lone surrogate: JSON allows the escape, no file system takes it
TAGGER = "tiny_tagger"
BASE_LORA = "rel/base.safetensors"
INTERNAL_ERRORS = ("AttributeError", "KeyError", "TypeError", "IndexError", "UnicodeEncodeError",
                   "UnicodeDecodeError", "ZeroDivisionError", "AssertionError", "NameError")


@dataclass(frozen=True)
class Case:
    what: str  # the bad input, in words
    node: str  # the node whose input it is
    field: str
    value: Any
    safe_name: str | None = None  # Save LoRA makes some names safe: the file it must save instead


MODEL_LINK = Link(["1", 0])  # the checkpoint loader's MODEL, given where another type belongs

CASES = [
    Case("empty folder name", "LoadDataset", "folder", ""),
    Case("'../' out of the input folder", "LoadDataset", "folder", f"../../../../../{ESCAPE}"),
    Case("Windows reserved name", "LoadDataset", "folder", "CON"),
    Case("NUL byte in the folder", "LoadDataset", "folder", "rel_rings\x00/../../etc"),
    Case("20,000-character folder", "LoadDataset", "folder", LONG),
    Case("number for the folder", "LoadDataset", "folder", 12345),
    Case("lone surrogate in the folder", "LoadDataset", "folder", f"rel_rings{SURROGATE}"),
    Case("negative resolution", "LoadDataset", "resolution", -512),
    Case("huge resolution", "LoadDataset", "resolution", 10**12),
    Case("text for a number", "LoadDataset", "resolution", "five hundred"),
    Case("dropout rate above 1", "LoadDataset", "caption_dropout_rate", 5.0),
    Case("colour that is no colour", "LoadDataset", "background", "#zzzzzz"),
    Case("option not in the list", "LoadDataset", "on_bad_file", "explode"),
    Case("tagger folder out of models/captioners", "AutoCaption", "tagger", f"../../../{ESCAPE}"),
    Case("style not in the list", "AutoCaption", "style", "poem"),
    Case("caption mode not in the list", "AutoCaption", "mode", "delete"),
    Case("negative threshold", "AutoCaption", "general_threshold", -1.0),
    Case("huge token count", "AutoCaption", "max_new_tokens", 10**9),
    Case("batch of 0 images", "AutoCaption", "batch_size", 0),
    Case("rank 0", "TrainLoRA", "rank", 0),
    Case("huge rank", "TrainLoRA", "rank", 10**9),
    Case("negative learning rate", "TrainLoRA", "learning_rate", -1.0),
    Case("NaN learning rate", "TrainLoRA", "learning_rate", float("nan")),
    Case("infinite learning rate", "TrainLoRA", "learning_rate", float("inf")),
    Case("huge step count", "TrainLoRA", "steps", 10**15),
    Case("negative seed", "TrainLoRA", "seed", -1),
    Case("optimizer not in the list", "TrainLoRA", "optimizer", "Pickle"),
    Case("MODEL linked where the dataset goes", "TrainLoRA", "dataset", MODEL_LINK),
    Case("'../' in the run name", "TrainLoRA", "run_name", f"../../../{ESCAPE}"),
    Case("empty run name", "TrainLoRA", "run_name", ""),
    Case("betas that are not numbers", "LoraLabOptimizerSettings", "betas", "0.9, banana"),
    Case("huge weight decay", "LoraLabOptimizerSettings", "weight_decay", 1e308),
    Case("negative noise offset", "LoraLabLossSettings", "noise_offset", -5.0),
    Case("gradient accumulation 0", "LoraLabMemorySettings", "gradient_accumulation", 0),
    Case("LoRA dropout 2", "LoraLabAdapterSettings", "lora_dropout", 2.0),
    Case("negative sample interval", "LoraLabSampleSettings", "sample_every", -1),
    Case("clip skip 999", "LoraLabTextEncoderSettings", "clip_skip", 999),
    Case("'../' in the file name", "SaveCheckpoint", "filename", f"../../../../{ESCAPE}"),
    Case("absolute file name", "SaveCheckpoint", "filename", f"/tmp/{ESCAPE}"),
    Case("empty file name", "SaveCheckpoint", "filename", ""),
    Case("if_exists not in the list", "SaveCheckpoint", "if_exists", "maybe"),
    Case("Windows reserved name CON", "SaveCheckpoint", "filename", "rel/CON", "rel/_CON.safetensors"),
    Case("Windows reserved aux.txt", "SaveCheckpoint", "filename", "rel/aux.txt", "rel/_aux.txt.safetensors"),
    Case("reserved names as folders", "SaveCheckpoint", "filename", "rel/COM1/lpt9", "rel/_COM1/_lpt9.safetensors"),
    Case("NUL byte in the file name", "SaveCheckpoint", "filename", "rel/nul\x00byte", "rel/nul_byte.safetensors"),
    Case("invisible and emoji characters", "SaveCheckpoint", "filename", f"rel/{ODD}", "rel/sks😀.safetensors"),
    Case("lone surrogate in the file name", "SaveCheckpoint", "filename", f"rel/a{SURROGATE}b", "rel/a_b.safetensors"),
    Case("20,000-character file name", "SaveCheckpoint", "filename", f"rel/{LONG}", f"rel/{'x' * 120}.safetensors"),
    Case("strengths that are not numbers", "TestLoRAStrengthSweep", "strengths", "a, b"),
    Case("infinite strength", "TestLoRAStrengthSweep", "strengths", "1e999"),
    Case("no strengths", "TestLoRAStrengthSweep", "strengths", ""),
    Case("negative width", "TestLoRAStrengthSweep", "width", -64),
    Case("huge height", "TestLoRAStrengthSweep", "height", 10**7),
    Case("'../' to a LoRA file", "TestLoRAStrengthSweep", "lora_name", f"../../../{ESCAPE}.safetensors"),
    Case("'../' in the checkpoints list", "TestLoRAStrengthSweep", "checkpoints", f"../../{ESCAPE}.safetensors"),
    Case("Windows reserved LoRA name", "CompareLoRAStack", "other_loras", "NUL: 0.5"),
    Case("strength that is no number", "CompareLoRAStack", "other_loras", f"{BASE_LORA}: banana"),
    Case("NaN strength", "CompareLoRAStack", "other_loras", f"{BASE_LORA}: nan"),
    Case("huge strength", "CompareLoRAStack", "lora_strength", 1e300),
    Case("emoji-only stack strengths", "CompareLoRAStack", "stack_strengths", "😀"),
]  # fmt: skip

SETTINGS_NODES = {case.node for case in CASES if case.node.startswith("LoraLab")}


@pytest.fixture(scope="module")
def server(comfy_server: ComfyServer) -> ComfyServer:
    """The shared server with a small ring dataset, the tiny tagger and a LoRA file to test with."""
    make_ring_dataset(comfy_server, "rel_rings", count=2)
    tagger = comfy_server.models_dir / "captioners" / TAGGER
    if not (tagger / "model.onnx").is_file():
        build_tiny_tagger(tagger)
    graph, trained = training_graph(comfy_server)
    graph.node("SaveCheckpoint", lora=trained[0], filename=BASE_LORA.removesuffix(".safetensors"),
               if_exists="overwrite")
    comfy_server.run(graph.to_api()).raise_for_error()
    return comfy_server


def training_graph(server: ComfyServer, **options: Any) -> tuple[Graph, NodeHandle]:
    graph = Graph()
    checkpoint, dataset = checkpoint_and_dataset(server, graph, "rel_rings")
    return graph, train_node(server, graph, checkpoint, dataset, **{"steps": 1, "run_name": "rel_bad", **options})


def case_graph(server: ComfyServer, case: Case) -> tuple[Graph, NodeHandle]:
    """A small working graph around ``case.node`` with ``case.value`` in ``case.field``; the node it tests."""
    if case.node in ("TrainLoRA", *SETTINGS_NODES):
        value = {} if isinstance(case.value, Link) else {case.field: case.value}
        graph, trained = training_graph(server, **value)
        if isinstance(case.value, Link):
            trained.set(**{case.field: case.value})
        graph.node("PreviewImage", images=trained[2])
        if case.node == "TrainLoRA":
            return graph, trained
        settings = [handle for node_id in graph.nodes if (handle := graph.handle(node_id)).class_type == case.node]
        return graph, settings[0]
    if case.node == "SaveCheckpoint":
        graph, trained = training_graph(server)
        return graph, graph.node("SaveCheckpoint", lora=trained[0], **{"filename": "rel/ok", "if_exists": "overwrite",
                                                                     case.field: case.value})
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
    if case.node in ("LoadDataset", "AutoCaption"):
        load = graph.node("LoadDataset", **{**server.widget_defaults("LoadDataset"), "folder": "rel_rings",
                                            "resolution": 64, "bucket_step": 64})
        if case.node == "LoadDataset":
            load.set(**{case.field: case.value})
            graph.node("PreviewAny", source=load[1])
            return graph, load
        inputs = {**server.widget_defaults("AutoCaption"), "dataset": load[0], "tagger": TAGGER, "style": "tags"}
        return graph, graph.node("AutoCaption", **{**inputs, case.field: case.value})
    inputs = {**server.widget_defaults(case.node), "model": checkpoint[0], "clip": checkpoint[1],
              "vae": checkpoint[2], "lora_name": BASE_LORA, "prompts": "{trigger}", "steps": 1, "cfg": 1.0,
              "width": 64, "height": 64}
    if case.node == "TestLoRAStrengthSweep":
        inputs.update(strengths="1.0", include_baseline=False)
    return graph, graph.node(case.node, **{**inputs, case.field: case.value})


def outcome(server: ComfyServer, case: Case) -> tuple[str, str]:
    """("refused", the message a person sees) or ("saved", the file's name in models/loras) or ("ran", "")."""
    graph, node = case_graph(server, case)
    try:
        result = server.wait(submit_raw(server, graph.to_api()), timeout=300)
    except PromptRejected as rejected:
        errors = rejected.node_errors.get(node.id, {}).get("errors", [])
        if not errors:  # refused elsewhere than the node tried: show everything
            return "refused", json.dumps(rejected.node_errors, ensure_ascii=False)
        return "refused", " | ".join(f"{error.get('message', '')}: {error.get('details', '')}" for error in errors)
    if result.ok:
        if case.node == "SaveCheckpoint":
            saved = result.outputs[node.id]["text"][0].splitlines()[0].removeprefix("Saved ")
            return "saved", saved
        return "ran", ""
    details = result.error_details or {}
    message = f"{str(details.get('exception_type')).rsplit('.', 1)[-1]}: {details.get('exception_message', result.error)}"
    return "refused", message


def printable(text: str, limit: int = 160) -> str:
    """``text`` on one line, control and invisible characters escaped, cut at ``limit`` characters."""
    shown = "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text.replace("\n", " "))
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def submit_raw(server: ComfyServer, graph: dict[str, Any]) -> str:
    """POST /prompt with the JSON a client may send that ``requests`` itself refuses to write (NaN,
    Infinity, lone surrogates); the prompt id, or PromptRejected as ``ComfyServer.submit`` raises it."""
    body = json.dumps({"prompt": graph, "client_id": server.client_id}, allow_nan=True)
    with requests.Session() as session:
        session.trust_env = False  # loopback only: never through a proxy from the environment
        response = session.post(f"{server.url}/prompt", data=body, timeout=60,
                                headers={"Content-Type": "application/json"})
    payload = response.json()
    if response.status_code == 400 or payload.get("node_errors"):
        if response.ok:  # the outputs that did validate were queued: let them finish first
            server.wait(payload["prompt_id"], timeout=300)
        raise PromptRejected(payload.get("error", {}), payload.get("node_errors", {}))
    response.raise_for_status()
    return payload["prompt_id"]


def files_under(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if not path.is_dir()}


def test_bad_inputs_are_refused_by_name_or_made_safe_and_the_server_goes_on(
    server: ComfyServer, figures: Callable[[str, str], None]
):
    allowed = [server.models_dir / "loras", server.output_dir, server.base_dir / "temp", server.input_dir,
               server.base_dir / "user", server.models_dir / "captioners"]
    watched = server.base_dir.parent  # this session's temporary folders: the server's and every test's
    before = files_under(watched)
    problems = []
    for case in CASES:
        kind, text = outcome(server, case)
        figures("Bad inputs through POST /prompt (case -> outcome)",
                f"{case.node}.{case.field}, {case.what}: {kind}: {printable(text)}")
        if case.safe_name is not None:
            if (kind, text) != ("saved", case.safe_name):
                problems.append(f"{case.what}: expected to be saved as {case.safe_name!r}, got {kind}: {text}")
            elif not (server.models_dir / "loras" / case.safe_name).is_file():
                problems.append(f"{case.what}: {case.safe_name} is not in models/loras")
            continue
        if kind != "refused":
            problems.append(f"{case.what}: expected a refusal naming {case.field!r}, got {kind}: {text}")
        elif case.field not in text or "Traceback" in text or text.startswith(INTERNAL_ERRORS):
            problems.append(f"{case.what}: the message does not name {case.field!r} plainly: {text}")
    written = sorted(path for path in files_under(watched) - before
                     if not any(path.is_relative_to(folder) for folder in allowed)
                     and not (path.parent == server.base_dir and path.name.startswith("comfyui")))  # its log, db
    escaped = [path for root in (Path("/tmp"), server.comfy_root, server.comfy_root.parent)
               for path in root.glob(f"*{ESCAPE}*")]
    follow_up = Graph()
    follow_up.node("PreviewAny", source=follow_up.node("CheckpointLoaderSimple", ckpt_name=CKPT)[0])
    still_serving = server.run(follow_up.to_api()).ok
    figures("Bad inputs through POST /prompt (case -> outcome)",
            f"{len(CASES)} cases; files written outside ComfyUI's folders: {len(written) + len(escaped)}; "
            f"a normal job after the batch: {'ran' if still_serving else 'FAILED'}")
    assert not problems, "\n".join(problems)
    assert not written and not escaped, f"written outside the allowed folders: {written + escaped}"
    assert still_serving
