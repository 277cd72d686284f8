"""Models: the small protocols the training loop needs from a model, and one implementation.

``protocols.py`` says what a denoiser (network, noise schedule, prediction type), a text encoder and a
latent codec must offer; ComfyUI's bridge (``nodes/bridge.py``) and ``diffusers_backend.py`` (for the
headless runner and the core tests) implement them.

May use: no other room.
"""
