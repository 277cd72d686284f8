"""Build ComfyUI API-format graphs in a few readable lines.

    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name="tiny_sd15.safetensors")
    positive = graph.node("CLIPTextEncode", clip=checkpoint[1], text="a red circle")
    ...
    server.run(graph.to_api())

``handle[slot]`` is a link ``["<node id>", slot]``. Plain lists given as input values are
wrapped as ``{"__value__": [...]}``, which is how ComfyUI tells a list value from a link.
"""

from __future__ import annotations

import copy
from typing import Any


class Link(list):  # type: ignore[type-arg]
    """``["<source node id>", output slot]``; a list so that it serialises as ComfyUI expects."""


class NodeHandle:
    def __init__(self, graph: Graph, node_id: str):
        self.graph = graph
        self.id = node_id

    def __getitem__(self, slot: int) -> Link:
        return Link([self.id, slot])

    @property
    def class_type(self) -> str:
        return self.graph.nodes[self.id]["class_type"]

    @property
    def inputs(self) -> dict[str, Any]:
        return self.graph.nodes[self.id]["inputs"]

    def set(self, **inputs: Any) -> NodeHandle:
        self.inputs.update({name: _encode(value) for name, value in inputs.items()})
        return self

    def __repr__(self) -> str:
        return f"NodeHandle({self.id!r}, {self.class_type!r})"


def _encode(value: Any) -> Any:
    if isinstance(value, NodeHandle):
        return value[0]
    if isinstance(value, Link):
        return value
    if isinstance(value, (list, tuple)):
        return {"__value__": list(value)}
    return value


class Graph:
    """An API-format graph under construction; node ids are "1", "2", ... in creation order."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}

    def node(self, class_type: str, /, **inputs: Any) -> NodeHandle:
        """Add a node. A ``NodeHandle`` passed as a value stands for its first output."""
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": {}}
        return NodeHandle(self, node_id).set(**inputs)

    def to_api(self) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(self.nodes)

    def copy(self) -> Graph:
        clone = Graph()
        clone.nodes = self.to_api()
        return clone

    def handle(self, node_id: str) -> NodeHandle:
        if node_id not in self.nodes:
            raise KeyError(f"no node {node_id!r} in this graph (ids: {sorted(self.nodes)})")
        return NodeHandle(self, node_id)


def txt2img_graph(
    ckpt_name: str,
    prompt: str,
    *,
    negative: str = "",
    width: int = 64,
    height: int = 64,
    seed: int = 0,
    steps: int = 2,
    cfg: float = 5.0,
    sampler_name: str = "euler",
    scheduler: str = "normal",
    filename_prefix: str = "txt2img",
) -> Graph:
    """The stock text-to-image chain. Node ids: 1 loader, 2/3 prompts, 4 latent, 5 KSampler,
    6 VAEDecode, 7 SaveImage."""
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=ckpt_name)
    positive = graph.node("CLIPTextEncode", clip=checkpoint[1], text=prompt)
    negative_node = graph.node("CLIPTextEncode", clip=checkpoint[1], text=negative)
    latent = graph.node("EmptyLatentImage", width=width, height=height, batch_size=1)
    sampled = graph.node(
        "KSampler",
        model=checkpoint[0],
        positive=positive[0],
        negative=negative_node[0],
        latent_image=latent[0],
        seed=seed,
        steps=steps,
        cfg=cfg,
        sampler_name=sampler_name,
        scheduler=scheduler,
        denoise=1.0,
    )
    decoded = graph.node("VAEDecode", samples=sampled[0], vae=checkpoint[2])
    graph.node("SaveImage", images=decoded[0], filename_prefix=filename_prefix)
    return graph
