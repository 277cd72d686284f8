"""Adapters: what is trained and the file it is saved as.

``config`` (the adapter's type, rank, alpha, target, conv rank, block weights), ``inject`` (peft LoRA / LoHa /
LoKr / DoRA layers put into a network and taken out again, leaving the base weights as they were),
``blocks`` (the ResBlock convolutions LoCon adds, the block groups that get a learning-rate weight),
``adapter_types`` (each type's peft config and its LyCORIS keys), ``export`` (kohya key names, ``.alpha``,
atomic safetensors files).

May use: no other room.
"""
