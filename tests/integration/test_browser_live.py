"""Training you can watch, in ComfyUI's own frontend in a real browser (test_browser.py's fixtures): while
Train LoRA trains from the Run button, the live chart inside its node shows a step count that rises
between two reads, draws a chart, and the sample images stay visible beside it. The screenshot of the
node mid-training goes to .out/browser/ (and docs/images/ with LORA_LAB_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.helpers.toy import install_toy_workflow_inputs
from tests.helpers.workflows import load_ui
from tests.integration.test_browser import (  # noqa: F401 - browser, fresh_page: the shared fixtures
    _MISSING,
    _REQUIRED,
    SET_WIDGETS_JS,
    WATCH_RUN_JS,
    _load,
    _screenshot,
    browser,
    fresh_page,
)
from tools.comfy_server import ComfyServer

pytestmark = pytest.mark.skipif(_MISSING is not None and not _REQUIRED, reason=str(_MISSING))

STEPS = 30  # at batch 1 on the toy: a few seconds on an idle 2-core machine, long enough to read twice

# Train LoRA only (the sweep, the previews and the dataset report, which sits under Train LoRA, off the
# canvas: the node grows over it once sample images show), with sample images every 10 steps from a
# Samples and Checkpoints node wired in, and the view on Train LoRA at 100 %.
PREPARE_JS = """() => {
    for (const node of app.graph._nodes.filter(n => ['TestLoRAStrengthSweep', 'PreviewImage', 'PreviewAny'].includes(n.type))) {
        app.graph.remove(node);
    }
    const trainer = app.graph._nodes.find(n => n.type === 'TrainLoRA');
    const samples = LiteGraph.createNode('LoraLabSampleSettings');
    app.graph.add(samples);
    samples.pos = [trainer.pos[0] + trainer.size[0] + 60, trainer.pos[1] + 200];
    samples.connect(0, trainer, trainer.inputs.findIndex(i => i.name === 'sample_settings'));
    const set = (node, name, value) => { node.widgets.find(w => w.name === name).value = value; };
    set(samples, 'sample_every', 10);
    set(samples, 'sample_steps', 2);
    set(samples, 'sample_prompts', '{trigger}, a green ring on a red background');
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset = [-trainer.pos[0] + 80, -trainer.pos[1] + 160];  // below the tab bar
    app.graph.setDirtyCanvas(true, true);
    return trainer.id;
}"""

# What the chart widget shows: its state, the status line, and how many of its canvas pixels are drawn.
READ_CHART_JS = """(id) => {
    const node = app.graph.getNodeById(id);
    const live = node.loraLabLive;
    const widget = (node.widgets || []).find(w => w.name === 'lora_lab_live');
    if (!live || !widget) return null;
    const canvas = widget.canvas;
    let drawn = 0;
    if (canvas.width && canvas.height) {
        const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) drawn++;
    }
    const box = canvas.getBoundingClientRect();
    const previews = (node.imgs || []).filter(i => i.complete && i.naturalWidth > 0).length;
    const previewUrls = (app.nodePreviewImages?.[String(id)] || []).length;
    return {step: live.step, total: live.total, points: live.points.length, text: widget.line.textContent,
            drawn, visible: box.width > 100 && box.height > 100, previews, previewUrls,
            fits: node.size[1] >= node.computeSize()[1]};
}"""

NODE_BOX_JS = """(id) => {
    const node = app.graph.getNodeById(id);
    const ds = app.canvas.ds, rect = app.canvas.canvas.getBoundingClientRect();
    const title = LiteGraph.NODE_TITLE_HEIGHT;
    return {x: (node.pos[0] + ds.offset[0]) * ds.scale + rect.left - 8,
            y: (node.pos[1] - title + ds.offset[1]) * ds.scale + rect.top - 8,
            width: node.size[0] * ds.scale + 16, height: (node.size[1] + title) * ds.scale + 16};
}"""


def _read_when(page: Any, node_id: int, condition: str, errors: list[str], timeout: float = 240_000) -> dict[str, Any]:
    try:
        page.wait_for_function(f"(id) => {{ const c = ({READ_CHART_JS})(id); return c && ({condition}); }}",
                               arg=node_id, timeout=timeout, polling=200)
    except Exception as error:  # noqa: BLE001 - said with what the chart showed and the page's errors
        chart = page.evaluate(READ_CHART_JS, node_id)
        raise AssertionError(f"the chart never showed {condition}: {chart}; page errors: {errors[-5:]}") from error
    return page.evaluate(READ_CHART_JS, node_id)


def test_the_train_lora_node_shows_a_live_chart_and_samples_while_it_trains(
    fresh_page, comfy_server: ComfyServer  # noqa: F811 - the fixture imported above
):
    page = fresh_page
    page.set_viewport_size({"width": 1920, "height": 1400})  # the node grows taller than 1080 px with samples
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    uncaught: list[str] = []
    page.on("pageerror", lambda error: uncaught.append(f"{error}\n{error.stack}"))
    install_toy_workflow_inputs(comfy_server)
    _load(page, load_ui("train_then_test"), "live_training")
    node_id = page.evaluate(PREPARE_JS)
    overrides = {"TrainLoRA": {"steps": STEPS, "batch_size": 1, "run_name": "browser_live"},
                 "SaveCheckpoint": {"filename": "tests/browser_live"}}
    assert page.evaluate(SET_WIDGETS_JS, overrides) == []
    assert page.evaluate(READ_CHART_JS, node_id) is None  # no chart before a run
    page.evaluate(WATCH_RUN_JS)
    page.get_by_role("button", name="Run", exact=True).first.click()

    first = _read_when(page, node_id, "c.step >= 3", errors)
    second = _read_when(page, node_id, f"c.step > {first['step']}", errors)
    assert first["total"] == second["total"] == STEPS
    assert first["step"] < second["step"] <= STEPS, (first, second)
    assert second["text"].startswith(f"step {second['step']}/{STEPS} · ")
    assert re.search(r"[\d.]+ (it/s|s/it)", second["text"]), second
    assert "ETA" in first["text"], first
    assert second["visible"] and second["drawn"] > 500, second

    # Mid-run, after the first sample images: the chart and the samples both on the node.
    shown = _read_when(page, node_id, f"c.previews > 0 && c.fits && c.points >= 10 && c.step < {STEPS}", errors)
    assert shown["drawn"] > second["drawn"] / 2 and shown["visible"], shown
    page.wait_for_timeout(300)
    _screenshot(page, "train_lora_live", clip=page.evaluate(NODE_BOX_JS, node_id))

    # Collapsed, the node hides the chart and the updates go on arriving; opened again, it draws the run.
    collapse = "(id) => app.graph.getNodeById(id).collapse()"
    page.evaluate(collapse, node_id)
    done = _read_when(page, node_id, f"c.step === {STEPS}", errors)
    assert not done["visible"] and "done" not in done["text"], done
    page.evaluate(collapse, node_id)
    opened = _read_when(page, node_id, "c.visible && c.text.includes('done')", errors)
    assert opened["points"] >= STEPS // 2 and opened["drawn"] > 500, opened
    assert not [e for e in uncaught if "lora_lab" in e], uncaught
    page.wait_for_function("() => window.__loraLabRun !== null", timeout=240_000)
    assert page.evaluate("() => window.__loraLabRun") == "success"
