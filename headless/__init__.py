"""The headless runner: train from a workflow saved in the canvas (UI or API format) or a small TOML file,
with ComfyUI imported as a library (no server), alone or under ``accelerate launch``.

``train.py`` is the command; ``cli`` reads its arguments; ``workflow_files`` turns a workflow or TOML file
into an API graph (with ``ui_workflow`` and ``node_inputs``, the frontend's widget rules); ``checks`` refuses
bad input before anything loads; ``graph`` runs the nodes training needs through their own classes;
``comfy_library`` finds and sets up ComfyUI.

Like ``nodes/``, this room imports ComfyUI; ``trainer_core`` does not import it. Its modules use relative
imports only, so it runs as part of the pack (``<pack>.headless``).
"""
