"""Train LoRA in an API graph from one flat set of inputs, its settings nodes added where they are needed.

Train LoRA shows the settings the guides teach; the others live on settings nodes wired into its
``*_settings`` inputs. Scripts and tests still say what they train in one flat set of keyword arguments:

    trained = add_train_lora(graph.node, server.object_info(), model=checkpoint[0], ..., noise_offset=0.05)

``add_train_lora`` learns from ``/object_info`` which settings node declares each input that Train LoRA
lacks, adds that node (its other widgets at their defaults) and connects it to the matching input. A
settings node whose values would all be its defaults is left out: an unconnected input means exactly that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from headless.workflow_files import settings_hosts
from tools.graph import NodeHandle
from tools.workflow_format import default_inputs

TRAIN_LORA = "TrainLoRA"


def add_train_lora(
    add_node: Callable[..., NodeHandle], object_info: dict[str, Any], /, **inputs: Any
) -> NodeHandle:
    """Add Train LoRA with ``inputs``; each one Train LoRA does not declare goes to the settings node that
    does. ``add_node(class_type, **inputs)`` is ``Graph.node`` or a builder's ``node``."""
    hosts = settings_hosts(object_info)
    own: dict[str, Any] = {}
    routed: dict[tuple[str, str], dict[str, Any]] = {}
    for name, value in inputs.items():
        if name in hosts:
            routed.setdefault(hosts[name], {})[name] = value
        else:
            own[name] = value
    for (class_type, socket), values in routed.items():
        defaults = default_inputs(object_info[class_type])
        if all(defaults.get(name) == value for name, value in values.items()):
            continue
        if socket in own:
            raise ValueError(
                f"Train LoRA's {socket} is given as a node and as values ({', '.join(values)}): give one of them"
            )
        own[socket] = add_node(class_type, **{**defaults, **values})[0]
    return add_node(TRAIN_LORA, **own)
