"""The small HTTP API the pack's canvas extension (web/lora_lab.js) reads."""

from __future__ import annotations

from ..trainer_core.training.presets import presets_for_web

_registered = False


def register_routes() -> None:
    """``GET /lora_lab/presets``: TrainLoRA's preset table. Registered once, before ComfyUI adds
    its routes to the web app (custom nodes load first)."""
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
        return web.json_response(presets_for_web())

    _registered = True
