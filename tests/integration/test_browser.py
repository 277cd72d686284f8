"""ComfyUI's own frontend in a real browser (Debian's chromium, driven by Playwright from PyPI):
every shipped UI workflow loads with no missing or failing node and queues the graph of its API
file; train-then-test, queued with the Run button on the tiny model, shows its strength grid.

Screenshots are written to .out/browser/; with LORA_LAB_UPDATE_SCREENSHOTS=1 also to docs/images/
(the README's pictures). Without chromium or playwright the tests skip, except under CI (or
LORA_LAB_REQUIRE_BROWSER=1), where tools/run_tests.sh installs both and a skip would hide a failure.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from PIL import Image

from tests.helpers.toy import install_toy_workflow_inputs
from tests.helpers.workflows import (
    REPO_ROOT,
    declared_inputs_only,
    load_api,
    load_ui,
    workflow_names,
)
from tools.comfy_server import ComfyServer

CHROMIUM = Path(os.environ.get("LORA_LAB_CHROMIUM", "/usr/bin/chromium"))
# Debian's build, with nothing that reaches past loopback (it keeps trying to otherwise).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-proxy-server",
]
VIEWPORT = {"width": 1920, "height": 1080}
SCREENSHOTS = REPO_ROOT / ".out" / "browser"
README_IMAGES = REPO_ROOT / "docs" / "images"
BROWSER_LORA = "tests/browser_lora"  # its own file, so the run is not answered from the server's cache


def _browser_missing() -> str | None:
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or run tools/setup_browser.sh)"
    if importlib.util.find_spec("playwright") is None:
        return (
            "playwright is not installed: pip install playwright (the 'test' extra; no 'playwright install')"
        )
    return None


_MISSING = _browser_missing()
_REQUIRED = bool(os.environ.get("CI") or os.environ.get("LORA_LAB_REQUIRE_BROWSER"))
pytestmark = pytest.mark.skipif(_MISSING is not None and not _REQUIRED, reason=str(_MISSING))

OPEN_DIALOGS_JS = """() => Array.from(document.querySelectorAll('[role=dialog]'))
    .filter(d => d.offsetParent !== null || d.getClientRects().length > 0)
    .map(d => d.innerText.trim().slice(0, 300))"""

CANVAS_NODES_JS = """() => app.graph._nodes.map(n => ({
    id: n.id, type: n.type, registered: !!LiteGraph.registered_node_types[n.type], has_errors: !!n.has_errors,
}))"""

SET_WIDGETS_JS = """(overrides) => {
    const problems = [];
    for (const [type, values] of Object.entries(overrides)) {
        const nodes = app.graph._nodes.filter(n => n.type === type);
        if (nodes.length !== 1) { problems.push(`${nodes.length} nodes of type ${type}`); continue; }
        for (const [name, value] of Object.entries(values)) {
            const widget = (nodes[0].widgets || []).find(w => w.name === name);
            if (!widget) { problems.push(`${type} has no widget ${name}`); continue; }
            widget.value = value;
            widget.callback?.(value);
        }
    }
    app.graph.setDirtyCanvas(true, true);
    return problems;
}"""

WATCH_RUN_JS = """() => {
    window.__loraLabRun = null;
    app.api.addEventListener('execution_success', () => { window.__loraLabRun ??= 'success'; });
    app.api.addEventListener('execution_error', (event) => {
        window.__loraLabRun = 'error: ' + JSON.stringify(event.detail).slice(0, 3000);
    });
}"""

# Done when the run has ended and the page has fetched and decoded the grid the sweep node shows
# and the previews (loss curve, strength grid).
RUN_FINISHED_JS = """() => {
    if (window.__loraLabRun === null) return null;
    if (window.__loraLabRun !== 'success') return window.__loraLabRun;
    const loaded = (node, part) => (node?.imgs || []).some(
        i => i.src.includes('/view?') && i.src.includes(part) && i.complete && i.naturalWidth > 0);
    const sweep = app.graph._nodes.find(n => n.type === 'TestLoRAStrengthSweep');
    const previews = app.graph._nodes.filter(n => n.type === 'PreviewImage');
    return loaded(sweep, 'filename=grid') && previews.every(n => loaded(n, 'filename=')) ? 'success' : null;
}"""


@pytest.fixture(scope="module")
def browser(comfy_server: ComfyServer) -> Iterator[Any]:
    if _MISSING:
        pytest.fail(f"the browser tests must run here (CI or LORA_LAB_REQUIRE_BROWSER is set): {_MISSING}")
    from playwright.sync_api import sync_playwright

    comfy_server.require_nodes("LoadDataset", "TrainLoRA", "SaveCheckpoint", "TestLoRAStrengthSweep")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def _stay_on_loopback(route: Any) -> None:
    """Requests the frontend makes past loopback (fonts, news, template thumbnails) are refused."""
    if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
        route.continue_()
    else:
        route.abort()


def _open_frontend(browser: Any, url: str) -> Any:
    page = browser.new_page(viewport=VIEWPORT)
    page.route("**/*", _stay_on_loopback)
    page.set_default_timeout(60_000)
    page.goto(url)
    page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph")
    page.wait_for_timeout(1500)  # the frontend opens its "Get Started with a Template" dialog late
    _close_dialogs(page)
    _tidy_for_screenshots(page)
    return page


@pytest.fixture(scope="module")
def page(browser: Any, comfy_server: ComfyServer) -> Any:
    """One tab for the loading checks."""
    return _open_frontend(browser, comfy_server.url)


@pytest.fixture
def fresh_page(browser: Any, comfy_server: ComfyServer) -> Iterator[Any]:
    """A tab of its own (with no other workflow tabs in the screenshots)."""
    page = _open_frontend(browser, comfy_server.url)
    yield page
    page.close()


def _close_dialogs(page: Any) -> None:
    """Escape closes the frontend's dialogs once the page has had a click; before that (the
    template browser that opens first) a click on the dimmed area around the dialog does."""
    for attempt in range(6):
        if not page.evaluate(OPEN_DIALOGS_JS):
            return
        if attempt % 2:
            page.mouse.click(3, VIEWPORT["height"] // 2)
        else:
            page.keyboard.press("Escape")
        page.wait_for_timeout(400)
    raise AssertionError(f"dialogs that Escape does not close: {page.evaluate(OPEN_DIALOGS_JS)}")


def _tidy_for_screenshots(page: Any) -> None:
    """Hide the minimap and the "Nodes 2.0" banner: cosmetic, so failures here are ignored."""
    page.evaluate("""async () => {
        try { await app.extensionManager.setting.set('Comfy.Minimap.Visible', false); } catch (e) {}
        const text = Array.from(document.querySelectorAll('span'))
            .find(span => span.innerText.startsWith('Introducing Nodes 2.0'));
        text?.parentElement?.parentElement?.querySelector('button i[class*="lucide--x"]')?.parentElement?.click();
    }""")
    page.wait_for_timeout(300)


def _load(page: Any, workflow: dict[str, Any], name: str) -> None:
    page.evaluate(
        "async ([workflow, name]) => { await window.app.loadGraphData(workflow, true, true, name); }",
        [copy.deepcopy(workflow), name],
    )
    page.wait_for_timeout(500)


def _screenshot(page: Any, name: str, clip: dict[str, float] | None = None) -> Path:
    """A PNG of the page (or of its ``clip`` box) with a 256-colour palette (about a fifth of the size),
    in .out/browser/ and, with LORA_LAB_UPDATE_SCREENSHOTS=1, in docs/images/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), clip=clip)
    Image.open(path).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
        path, optimize=True
    )
    if os.environ.get("LORA_LAB_UPDATE_SCREENSHOTS"):
        README_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, README_IMAGES / path.name)
    return path


@pytest.mark.parametrize("name", workflow_names())
def test_ui_workflow_loads_with_every_node_known_and_none_in_error(page, comfy_server: ComfyServer, name):
    workflow = load_ui(name)
    _load(page, workflow, name)
    dialogs = page.evaluate(OPEN_DIALOGS_JS)
    assert not [text for text in dialogs if "missing" in text.lower()], dialogs
    _close_dialogs(page)

    nodes = page.evaluate(CANVAS_NODES_JS)
    assert sorted(node["id"] for node in nodes) == sorted(node["id"] for node in workflow["nodes"])
    assert [node for node in nodes if not node["registered"] or node["has_errors"]] == []

    # The frontend, with the real widget definitions, queues exactly the shipped API graph.
    queued = page.evaluate("async () => (await app.graphToPrompt()).output")
    assert declared_inputs_only(queued, comfy_server.object_info()) == load_api(name)
    if name == "train_then_test":
        _screenshot(page, "train_then_test_canvas")


def test_the_missing_node_check_sees_a_node_this_comfyui_lacks(page):
    """The check above is not blind: a node type the server lacks opens the frontend's dialog."""
    workflow = load_ui("test_existing_lora")
    workflow["nodes"][0]["type"] = "LoRALabNoSuchNode"
    _load(page, workflow, "missing_node_check")
    dialogs = page.evaluate(OPEN_DIALOGS_JS)
    assert any("missing" in text.lower() and "LoRALabNoSuchNode" in text for text in dialogs), dialogs
    nodes = page.evaluate(CANVAS_NODES_JS)
    assert any(not node["registered"] and node["has_errors"] for node in nodes)
    _close_dialogs(page)


def test_train_then_test_queued_from_the_canvas_shows_the_grid(fresh_page, comfy_server: ComfyServer):
    page = fresh_page
    install_toy_workflow_inputs(comfy_server)  # the shipped workflow runs as it is, on the toy
    overrides = {"SaveCheckpoint": {"filename": BROWSER_LORA}}
    grid_responses: list[int] = []

    def note_grid_fetch(response: Any) -> None:
        if "/view?" in response.url and "filename=grid" in response.url:
            grid_responses.append(response.status)

    page.on("response", note_grid_fetch)

    _load(page, load_ui("train_then_test"), "train_then_test")
    assert page.evaluate(SET_WIDGETS_JS, overrides) == []
    page.evaluate(WATCH_RUN_JS)
    page.get_by_role("button", name="Run", exact=True).first.click()
    outcome = page.wait_for_function(RUN_FINISHED_JS, timeout=300_000, polling=500).json_value()
    assert outcome == "success"
    assert 200 in grid_responses, f"the page never fetched the grid: {grid_responses}"
    assert page.evaluate("() => app.lastNodeErrors") in (None, {})
    assert page.evaluate("() => app.lastExecutionError") is None
    assert [node for node in page.evaluate(CANVAS_NODES_JS) if node["has_errors"]] == []
    assert (comfy_server.models_dir / "loras" / f"{BROWSER_LORA}.safetensors").is_file()
    page.wait_for_timeout(500)  # let the canvas draw the previews before the picture
    _screenshot(page, "train_then_test_grid")


PICK_PRESET_JS = """async (name) => {
    const trainer = app.graph._nodes.find(n => n.type === 'TrainLoRA');
    const widget = trainer.widgets.find(w => w.name === 'preset');
    widget.value = name;
    widget.callback?.(name);  // what the combo menu calls when a user picks an entry
    await new Promise(resolve => setTimeout(resolve, 1000));
    const values = (node) => Object.fromEntries((node.widgets || []).map(w => [w.name, w.value]));
    const dataset = app.graph._nodes.find(n => n.type === 'LoadDataset');
    // Train LoRA's fields wherever they live: its own widgets, those of the settings nodes wired in, and
    // the defaults an unconnected settings input stands for.
    const linked = trainer.inputs.filter(i => i.name.endsWith('_settings') && i.link != null);
    const wired = linked.map(
        i => app.graph.getNodeById((app.graph.links[i.link] ?? app.graph.links.get?.(i.link)).origin_id));
    const hosts = (await (await fetch('/lora_lab/presets')).json()).settings_hosts;
    const unwired = Object.fromEntries(Object.entries(hosts)
        .filter(([, host]) => !linked.some(i => i.name === host.socket)).map(([name, host]) => [name, host.default]));
    const settings = Object.fromEntries(wired.map(n => [n.type, values(n)]));
    return {trainer: Object.assign(unwired, ...wired.map(values), values(trainer)), dataset: values(dataset), settings};
}"""


def test_choosing_a_preset_fills_the_fields_which_stay_editable(page, comfy_server: ComfyServer):
    """In the canvas, picking "SDXL · style" on Train LoRA writes the preset's values into its fields
    and the wired Load Dataset's resolution; a field edited afterwards keeps the user's value, and
    the queued graph carries what the fields say."""
    from trainer_core.training.presets import preset_values

    _load(page, load_ui("train_then_test_sd15"), "preset_check")
    before = page.evaluate(PICK_PRESET_JS, "custom")
    assert before["trainer"]["rank"] == 16 and before["dataset"]["resolution"] == 512

    expected = preset_values("SDXL · style")
    after = page.evaluate(PICK_PRESET_JS, "SDXL · style")
    for field, value in expected.items():
        if field == "dataset_resolution":
            assert after["dataset"]["resolution"] == value == 1024
        else:
            assert after["trainer"][field] == value, field
    assert after["trainer"]["rank"] == 32 and after["trainer"]["gradient_checkpointing"] is True

    assert page.evaluate(SET_WIDGETS_JS, {"TrainLoRA": {"rank": 12}}) == []
    queued = page.evaluate("async () => (await app.graphToPrompt()).output")
    (trainer,) = [node for node in queued.values() if node["class_type"] == "TrainLoRA"]
    assert trainer["inputs"]["rank"] == 12 and trainer["inputs"]["preset"] == "SDXL · style"
    assert trainer["inputs"]["learning_rate"] == expected["learning_rate"]
    assert trainer["inputs"]["lr_scheduler"] == "cosine"


def test_an_sdxl_preset_wires_memory_settings_into_the_shipped_workflow(page, comfy_server: ComfyServer):
    """The shipped workflow has no Memory Settings node (its values are the defaults there). Picking an
    SDXL preset adds one, wired into Train LoRA's memory_settings, with gradient checkpointing on and bf16;
    a field on a settings node already wired in (the toy's Adapter Settings) is set there; the queued
    prompt carries them."""
    from trainer_core.training.presets import preset_values

    _load(page, load_ui("train_then_test"), "sdxl_preset_check")
    before = page.evaluate(PICK_PRESET_JS, "custom")
    assert "LoraLabMemorySettings" not in before["settings"]
    assert before["settings"]["LoraLabAdapterSettings"]["target_layers"] == "all_linear"

    expected = preset_values("SDXL · character")
    after = page.evaluate(PICK_PRESET_JS, "SDXL · character")
    memory = after["settings"]["LoraLabMemorySettings"]
    assert memory["gradient_checkpointing"] is True and memory["mixed_precision"] == "bf16"
    assert after["settings"]["LoraLabAdapterSettings"]["target_layers"] == expected["target_layers"] == "attention"
    for field, value in expected.items():
        if field != "dataset_resolution":
            assert after["trainer"][field] == value, field

    queued = page.evaluate("async () => (await app.graphToPrompt()).output")
    (trainer,) = [node for node in queued.values() if node["class_type"] == "TrainLoRA"]
    source = queued[trainer["inputs"]["memory_settings"][0]]
    assert source["class_type"] == "LoraLabMemorySettings"
    assert source["inputs"]["gradient_checkpointing"] is True and source["inputs"]["mixed_precision"] == "bf16"
    adapter = queued[trainer["inputs"]["adapter_settings"][0]]
    assert adapter["inputs"]["target_layers"] == "attention"
    assert [node for node in page.evaluate(CANVAS_NODES_JS) if node["has_errors"]] == []


def test_picking_prodigy_sets_its_learning_rate_and_back(page):
    """Prodigy wants learning rate 1.0 (it finds its own step size); AdamW's 5e-4 would make every
    step 2,000 times too small. Picking it in the canvas moves the rate; picking AdamW moves it back to
    Train LoRA's default."""
    from trainer_core.training.config import TrainingConfig

    _load(page, load_ui("train_then_test_sd15"), "prodigy_check")
    pick = """(name) => {
        const trainer = app.graph._nodes.find(n => n.type === 'TrainLoRA');
        const widget = trainer.widgets.find(w => w.name === 'optimizer');
        widget.value = name;
        widget.callback?.(name);
        return trainer.widgets.find(w => w.name === 'learning_rate').value;
    }"""
    assert page.evaluate(pick, "Prodigy") == 1.0
    assert page.evaluate(pick, "AdamW") == TrainingConfig().learning_rate == 5e-4
    assert page.evaluate(SET_WIDGETS_JS, {"TrainLoRA": {"learning_rate": 3e-4}}) == []
    assert page.evaluate(pick, "Lion") == 3e-4  # a user's own rate for an Adam-like optimizer stays
