"""LoRA Lab's training library: everything that trains, saves and pictures a LoRA, without ComfyUI.

Nothing here imports ComfyUI (``comfy``, ``comfy_api``, ``folder_paths``, ``server``, ...): the
nodes in ``nodes/`` adapt ComfyUI's objects to the small protocols in ``models``, and the headless
runner can use the same code. The library is grouped in rooms, each a sub-package whose docstring
says what it is for and which rooms it may use (``tests/core/test_rooms.py`` holds them to it):

- ``models``: what the core needs from a model (denoiser, text encoder, latent codec) and a
  diffusers implementation of it. Uses no other room.
- ``data``: a dataset folder: images, captions' text, repeats, buckets, and its report. Uses no other room.
- ``captioning``: automatic captions (taggers, image-to-text models) written into a dataset. Uses ``data``.
- ``adapters``: LoRA / LoHa / LoKr / DoRA injected through peft, and the kohya / LyCORIS file. Uses no other room.
- ``training``: the loop and everything it turns: losses, optimizers, schedulers, EMA, memory,
  checkpoints, presets, the file's training metadata. Uses ``models`` and ``adapters``.
- ``pictures``: labelled grids, loss curves, contact sheets, sweep plans. Uses ``data``.

``fields.py`` (settings fields that carry their help text) and ``smoothing.py`` (the smoothed loss curve
that the live chart and the loss image share) may be used by every room.
"""
