"""LoRA Lab for ComfyUI: registration only.

ComfyUI loads this folder as a custom node pack and calls ``comfy_entrypoint``. The import of
``comfy_api`` is guarded so that the package (and ``trainer_core`` inside it) can be imported by
pytest or the headless tools outside ComfyUI.
"""

from __future__ import annotations

try:
    from comfy_api.latest import ComfyExtension
except ImportError:  # outside ComfyUI: nothing to register
    ComfyExtension = None  # type: ignore[assignment,misc]

WEB_DIRECTORY = "./web"  # the canvas extension: TrainLoRA presets (web/lora_lab.js)

if ComfyExtension is not None:

    class LoRALabExtension(ComfyExtension):
        async def get_node_list(self):  # type: ignore[override]
            from .nodes import NODE_CLASSES

            return list(NODE_CLASSES)

    async def comfy_entrypoint() -> LoRALabExtension:
        from .nodes.web_routes import register_routes

        register_routes()
        return LoRALabExtension()
