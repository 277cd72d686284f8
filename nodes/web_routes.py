"""The small HTTP API the pack's canvas extension (web/lora_lab.js) reads."""

from __future__ import annotations

from ..trainer_core.training.presets import presets_for_web
from .train_lora import SETTINGS_NODES
from .train_progress import live_history
from .train_settings import settings_hosts

_registered = False


def register_routes() -> None:
    """``GET /lora_lab/presets``: ``presets``, TrainLoRA's preset table, and ``settings_hosts``, which settings
    node (and Train LoRA input) hosts each field that is not on Train LoRA itself, read from the node schemas.
    ``GET /lora_lab/train_progress?node=<id>``: Train LoRA node ``id``'s latest run so far (the live chart's
    points, bounded, and its latest step, it/s and time left; ``running`` false once it ended), ``{}`` before
    one; a page opened or reloaded mid-run draws the chart from it.
    Registered once, before ComfyUI adds its routes to the web app (custom nodes load first)."""
    global _registered
    if _registered:
        return
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:  # outside a ComfyUI server: nothing to serve
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is None:
        return

    @instance.routes.get("/lora_lab/presets")
    async def presets(request: web.Request) -> web.Response:
        return web.json_response({"presets": presets_for_web(), "settings_hosts": settings_hosts(SETTINGS_NODES)})

    @instance.routes.get("/lora_lab/train_progress")
    async def train_progress(request: web.Request) -> web.Response:
        history = live_history(request.query.get("node", ""))
        return web.json_response(history or {})

    _registered = True
