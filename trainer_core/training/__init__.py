"""Training: the loop and everything it turns.

``loop`` (encode once, then optimise; resume, checkpoints, cancel) with its parts ``run`` (a run's
optimizer, scheduler, moving average and random streams), ``step`` (one optimizer step),
``bookkeeping`` (export, checkpoints, the resume state), ``epochs`` (batches of one size and frame count) and
``results`` (step reports, the result, errors), ``parallel`` (the run's processes: one, or those
``accelerate launch`` started, for data parallel training); ``losses`` (noise, noise levels, targets in the
model's prediction space, min-SNR), ``masked_loss`` (masks at latent size), ``optimizers`` (with ``optimizer_packages``: the optional
packages some of them need), ``optimizer_settings``, ``schedulers``, ``ema``, ``memory`` and
``memory_estimate`` (memory options and the estimate before the first step), ``checkpoints``,
``text_encoder`` (a LoRA in the text encoders) with ``text_encoder_parts`` (which of them: CLIP, T5 with
``train_t5``, never a language model), ``encoding`` (latents of images and clips, caption embeddings, cached) with
``encoding_cache`` (the same kept on disk between runs),
``activations``, ``train_log`` (loss and learning rate per step: CSV, TensorBoard), ``live_progress`` (the
live chart's updates: smoothed loss, it/s, time left, throttled), ``metadata`` (the ``ss_*``
keys kohya writes), ``presets``, ``validation`` with ``validation_loss`` (the loss on held-out images at fixed
noise, the best checkpoint), ``report`` (a run's summary in words) with ``diagnosis`` (the loss curve read as the guides' table), and ``config``
(``TrainingConfig``).

The loop reads a dataset through its ``TrainingData`` protocol, so this room does not import ``data``.

May use: models, adapters.
"""
