"""Training you can watch, in a real ComfyUI server: a training prompt sends Train LoRA's live chart
events (``lora_lab.train_progress``) over ComfyUI's websocket, and serves the run so far at
``/lora_lab/train_progress`` for a page opened mid-run. The browser side is in test_browser.py."""

from __future__ import annotations

import pytest
import requests

from tests.helpers.training import checkpoint_and_dataset, make_ring_dataset, train_node
from tools.comfy_server import ComfyServer
from tools.graph import Graph

EVENT = "lora_lab.train_progress"
STEPS = 40


@pytest.fixture(scope="module")
def live_run(comfy_server: ComfyServer):
    server = comfy_server
    make_ring_dataset(server, "live_rings", count=4)
    graph = Graph()
    checkpoint, dataset = checkpoint_and_dataset(server, graph, "live_rings")
    trained = train_node(server, graph, checkpoint, dataset, steps=STEPS, lr_scheduler="cosine",
                         run_name="tests_live")
    graph.node("SaveCheckpoint", lora=trained[0], filename="tests/live", if_exists="overwrite")
    result = server.run(graph.to_api(), timeout=600).raise_for_error()
    events = [data for _, kind, data in server.events(result.prompt_id) if kind == EVENT]
    return {"prompt_id": result.prompt_id, "node": trained.id, "events": events}


def test_a_training_prompt_sends_live_chart_events_with_rising_steps_and_the_last(live_run):
    events = live_run["events"]
    assert events, "no live chart event came over the websocket"
    assert {e["node"] for e in events} == {live_run["node"]}
    steps = [e["step"] for e in events]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    assert steps[-1] == STEPS and all(e["total"] == STEPS for e in events)
    # Only new points in each event; together, every step once.
    assert [p[0] for e in events for p in e["points"]] == list(range(1, STEPS + 1))
    last = events[-1]
    assert last["it_per_s"] > 0 and last["eta_s"] == 0.0
    assert last["points"][-1][1] == last["loss"] and last["points"][-1][2] == last["smoothed_loss"]
    # The cosine schedule is what the chart's learning-rate line shows: it falls to the end.
    rates = [p[3] for e in events for p in e["points"]]
    assert rates[len(rates) // 2] > rates[-1] >= 0


def test_an_update_mid_run_reports_a_time_left(live_run):
    middle = [e for e in live_run["events"] if 1 < e["step"] < STEPS]
    if not middle:
        pytest.skip("the whole run fitted in one throttle interval: nothing to read mid-run")
    assert all(e["eta_s"] > 0 and e["it_per_s"] > 0 for e in middle)


def test_the_run_so_far_is_served_for_a_page_opened_mid_run(live_run, comfy_server: ComfyServer):
    url = f"{comfy_server.url}/lora_lab/train_progress"
    history = requests.get(url, params={"node": live_run["node"]}, timeout=10).json()
    assert history["prompt_id"] == live_run["prompt_id"] and history["running"] is False
    assert history["step"] == STEPS
    sent = [p for e in live_run["events"] for p in e["points"]]
    assert history["points"] == sent
    assert requests.get(url, params={"node": "no-such-node"}, timeout=10).json() == {}
