"""How much GPU memory a training run will need, before it starts.

Four parts:

* **base weights**: exact, the bytes of the network as it sits on the training device;
* **adapter**: exact, the LoRA's fp32 weights and their gradients (counted from the layers it
  wraps and the rank, the LoCon convolutions at ``conv_rank`` with their kernels);
* **optimizer state**: exact per parameter for each optimizer (AdamW keeps two fp32 moments,
  8-bit Adam two 8-bit ones, Prodigy four fp32 tensors, ...), plus an fp32 EMA when on; none of it
  when the state is kept in RAM (``optimizer_state_on_cpu``);
* **activations**: an approximation. What a network keeps for the backward pass grows with the
  pixels per step. Per family, in GiB per megapixel per image at fp16/bf16 (then scaled by batch size,
  by 2 for fp32 compute and by about a third with gradient checkpointing):

  - *reported*: SD1.5 / SD2 (``BaseModel``), SDXL and Flux.1: rough readings of what kohya /
    ai-toolkit users report (±30%);
  - *scaled*: every other family with linear layers (the DiTs: SD3, Flux.2, Chroma, Qwen-Image,
    Lumina 2, Z-Image, HiDream, AuraFlow, PixArt, HunyuanDiT, Wan, HunyuanVideo, ...): Flux.1's figure
    times the sum of the network's linear layers' input widths over Flux.1's (what backward keeps per
    token grows with it; these families, like Flux, see one token per 16x16 pixels). Read from the
    loaded network, so Z-Image and Lumina 2, or Wan 1.3B and 14B, differ. Less sure than reported:
    ±50%;
  - *a guess*: a network without linear layers: 12 GiB per megapixel, and the estimate says so.

Plus a fixed allowance for the CUDA context and allocator slack. The total is what TrainLoRA
shows before the first step, and a run that clearly cannot fit on the card stops there with what
to change instead of failing an hour in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from ..adapters.config import LoRAConfig
from ..adapters.inject import conv_rank_layers

GIB = 1024**3

# Optimizer state bytes per trained parameter.
OPTIMIZER_STATE_BYTES: dict[str, float] = {
    "AdamW": 8.0,  # exp_avg + exp_avg_sq, fp32
    "AdamW8bit": 2.0,
    "PagedAdamW8bit": 2.0,  # paged to CPU under pressure; counted as if resident
    "Lion": 4.0,  # one momentum
    "Lion8bit": 1.0,
    "Prodigy": 16.0,  # exp_avg, exp_avg_sq, s, p0
    "Adafactor": 1.0,  # factored second moments: about rows + columns per matrix
    "SGD": 4.0,  # a momentum buffer when momentum > 0 (counted always)
}
# Activation GiB per megapixel per image at 16-bit compute without gradient checkpointing, reported by users.
ACTIVATION_GIB_PER_MEGAPIXEL: dict[str, float] = {"BaseModel": 9.0, "SDXL": 11.0, "Flux": 18.0}
# Sum of the input widths of Flux.1's linear layers (19 double and 38 single blocks, 3072 wide, and its
# embedders), measured on ComfyUI's Flux built at its real size (a test checks it): other families scale from it.
FLUX_LINEAR_INPUTS = 1_771_840
DEFAULT_ACTIVATION_GIB_PER_MEGAPIXEL = 12.0
CHECKPOINTING_FACTOR = 0.35
CUDA_OVERHEAD_BYTES = int(0.6 * GIB)


@dataclass(frozen=True)
class MemoryEstimate:
    base_weights: int
    adapter: int
    optimizer_state: int
    activations: int
    overhead: int
    activation_basis: str = "reported"  # "reported", "scaled" (from Flux.1 by layer widths) or "guess"

    @property
    def total(self) -> int:
        return self.base_weights + self.adapter + self.optimizer_state + self.activations + self.overhead

    def describe(self) -> str:
        return (
            f"estimated GPU memory {_size(self.total)}: base weights {_size(self.base_weights)}, "
            f"LoRA + gradients {_size(self.adapter)}, optimizer state {_size(self.optimizer_state)}, "
            f"activations ~{_size(self.activations)}{_BASIS_NOTES[self.activation_basis]}, "
            f"CUDA overhead {_size(self.overhead)}"
        )


_BASIS_NOTES = {
    "reported": "",
    "scaled": " (scaled from Flux.1's by layer widths: less sure)",
    "guess": " (a guess: no figure for this model family)",
}


def _size(value: int) -> str:
    return f"{value / GIB:.1f} GiB" if value >= GIB else f"{value / 2**20:.0f} MiB"


def adapter_parameter_count(layer_shapes: Iterable[tuple[int, int]], rank: int, adapter: str = "lora") -> int:
    """Trained parameters of an adapter on layers of (in_features, out_features)."""
    return sum(_layer_parameters(fan_in, fan_out, 1, rank, adapter) for fan_in, fan_out in layer_shapes)


def network_adapter_parameters(network: nn.Module, targets: Iterable[str], config: LoRAConfig) -> int:
    """Trained parameters of ``config``'s adapter on ``targets`` of ``network``, each layer at its own rank
    (a LoCon convolution at ``conv_rank``, its kernel counted)."""
    targets = list(targets)
    conv_layers = set(conv_rank_layers(network, targets, config))
    total = 0
    for name in targets:
        module = network.get_submodule(name)
        if isinstance(module, nn.Linear):
            total += _layer_parameters(module.in_features, module.out_features, 1, config.rank, config.adapter)
        elif isinstance(module, nn.Conv2d):
            rank = config.conv_rank if name in conv_layers else config.rank
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total += _layer_parameters(module.in_channels, module.out_channels, kernel, rank, config.adapter)
    return total


def _layer_parameters(fan_in: int, fan_out: int, kernel: int, rank: int, adapter: str) -> int:
    """One layer's adapter parameters; ``kernel`` is a convolution's kernel area (1 for a linear layer)."""
    low_rank = rank * (fan_in * kernel + fan_out)
    if adapter == "loha":
        return 2 * low_rank  # two Hadamard-multiplied low-rank pairs
    if adapter == "lokr":
        return _lokr_parameters(fan_in, fan_out, rank, kernel)
    if adapter == "dora":
        return low_rank + fan_out  # plus the magnitude vector
    return low_rank


def _lokr_parameters(fan_in: int, fan_out: int, rank: int, kernel: int = 1) -> int:
    """peft's LoKr as trainer_core/adapter_types.py configures it: a full small Kronecker factor,
    and a second one (which carries the kernel) stored low-rank when the rank is below half its larger side."""
    from peft.tuners.lokr.layer import factorization

    in_m, in_n = factorization(fan_in, -1)
    out_l, out_k = factorization(fan_out, -1)
    second = out_k * in_n * kernel if rank >= max(out_k, in_n) / 2 else rank * (out_k + in_n * kernel)
    return out_l * in_m + second


def layer_shapes(network: nn.Module, targets: Iterable[str]) -> list[tuple[int, int]]:
    shapes = []
    for name in targets:
        module = network.get_submodule(name)
        if isinstance(module, nn.Linear):
            shapes.append((module.in_features, module.out_features))
        elif isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            shapes.append((module.in_channels * kernel, module.out_channels))
    return shapes


def linear_inputs(network: nn.Module) -> int:
    """The sum of the input widths of ``network``'s linear layers: what the activation approximation of
    families without a reported figure scales with."""
    return sum(module.in_features for module in network.modules() if isinstance(module, nn.Linear))


def activation_gib_per_megapixel(family: str, network_linear_inputs: int = 0) -> tuple[float, str]:
    """(GiB per megapixel per image at 16-bit without checkpointing, its basis: reported / scaled / guess)."""
    if family in ACTIVATION_GIB_PER_MEGAPIXEL:
        return ACTIVATION_GIB_PER_MEGAPIXEL[family], "reported"
    if network_linear_inputs > 0:
        return ACTIVATION_GIB_PER_MEGAPIXEL["Flux"] * network_linear_inputs / FLUX_LINEAR_INPUTS, "scaled"
    return DEFAULT_ACTIVATION_GIB_PER_MEGAPIXEL, "guess"


def tensor_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) + sum(
        b.numel() * b.element_size() for b in module.buffers()
    )


def estimate_training_memory(
    *,
    base_weight_bytes: int,
    adapter_parameters: int,
    optimizer: str,
    family: str,
    batch_size: int,
    width: int,
    height: int,
    precision: str,
    gradient_checkpointing: bool,
    optimizer_state_on_cpu: bool = False,
    ema: bool = False,
    network_linear_inputs: int = 0,
    latent_frames: int = 1,
) -> MemoryEstimate:
    """``family`` is ComfyUI's model class name; ``network_linear_inputs`` (``linear_inputs`` of the
    network) scales the activations of families without a reported figure. ``latent_frames``: the latent
    frames of the longest clip (a 17-frame Wan clip has 5): a video model's tokens, and so its activations,
    grow in proportion to them, one latent frame costing what one image of the same size does. ``optimizer_state_on_cpu``:
    the optimizer's state (and its fp32 copies, and the EMA) live in RAM, so none of it counts; ``ema``:
    an fp32 average of the adapter next to it."""
    megapixels = width * height / 1e6
    per_megapixel, basis = activation_gib_per_megapixel(family, network_linear_inputs)
    activations = per_megapixel * GIB * megapixels * batch_size * max(1, latent_frames)
    if precision == "fp32":
        activations *= 2
    if gradient_checkpointing:
        activations *= CHECKPOINTING_FACTOR
    return MemoryEstimate(
        base_weights=int(base_weight_bytes),
        adapter=adapter_parameters * 8,  # fp32 weights and fp32 gradients
        optimizer_state=0 if optimizer_state_on_cpu else int(
            adapter_parameters * (OPTIMIZER_STATE_BYTES.get(optimizer, 8.0) + (4.0 if ema else 0.0))
        ),
        activations=int(activations),
        overhead=CUDA_OVERHEAD_BYTES,
        activation_basis=basis,
    )


def memory_advice(
    estimate: MemoryEstimate, available: int, *, gradient_checkpointing: bool, optimizer: str, batch_size: int,
    latent_frames: int = 1,
) -> tuple[str, str | None]:
    """("fits", None), ("tight", warning) when the total with its approximate activations exceeds
    ``available`` bytes, or ("no", error) when even the exact parts do. ``latent_frames`` above 1 (clips)
    adds the advice to train fewer frames."""
    if estimate.total <= available:
        return "fits", None
    tips = []
    if not gradient_checkpointing:
        tips.append("turn on gradient_checkpointing")
    if latent_frames > 1:
        tips.append(f"train shorter clips (Load Dataset's frame count: memory grows with the {latent_frames} latent "
                    "frames of the longest clip)")
    if batch_size > 1:
        tips.append("lower batch_size (raise gradient_accumulation to keep the effective batch)")
    if optimizer in ("AdamW", "Prodigy", "Lion"):
        tips.append("pick AdamW8bit (needs bitsandbytes)")
    tips.append("lower the Load Dataset resolution")
    tips.append("load the checkpoint with a lower-precision weight_dtype")
    exact = estimate.total - estimate.activations
    verdict = "no" if exact > available else "tight"
    message = (
        f"This run needs about {estimate.total / GIB:.1f} GiB of GPU memory and the card has "
        f"{available / GIB:.1f} GiB ({estimate.describe()}). To fit: {'; '.join(tips)}."
    )
    return verdict, message
