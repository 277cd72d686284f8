"""LoCon in a real ComfyUI on the tiny SD1.5: conv_rank on the Adapter Settings node adds adapters to the
UNet's ResBlock convolutions and nowhere else, for lora, loha, lokr and dora; the stock LoraLoader reads
every key and draws the picture training drew; the file says conv_dim / conv_alpha as kohya writes them.

One graph trains five LoRAs (lora without conv_rank, and each type with it), each drawing a sample image at
its last step with the adapter still live (the train-time picture); one graph after it loads each file with
LoraLoader. (diffusers and SDXL: ``test_locon_model_level.py``.)
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from tests.helpers.training import CKPT, trained_and_loaded_back
from tests.integration.test_train_lora import PROMPT, latents, pixels
from tools.comfy_server import ComfyServer

STEPS, SEED = 20, 5
RANK, ALPHA, CONV_RANK, CONV_ALPHA = 8, 8.0, 4, 2.0
RUNS = {"plain": dict(adapter_type="lora"), **{t: dict(adapter_type=t, conv_rank=CONV_RANK, conv_alpha=CONV_ALPHA)
                                                 for t in ("lora", "loha", "lokr", "dora")}}
# kohya's (diffusers') names of a ResBlock's convolutions and of the down- / upsamplers'.
RESBLOCK_CONV = re.compile(r"_(resnets_\d+_(conv1|conv2|conv_shortcut)|downsamplers_0_conv|upsamplers_0_conv)$")


@pytest.fixture(scope="module")
def runs(comfy_server: ComfyServer):
    return trained_and_loaded_back(comfy_server, "locon_rings", RUNS, "locon", STEPS, SEED, PROMPT, rank=RANK,
                                   alpha=ALPHA)


def lora_path(server: ComfyServer, name: str):
    return server.models_dir / "loras" / "tests" / f"locon_{name}.safetensors"


def stems(tensors: dict) -> set[str]:
    return {key.split(".", 1)[0] for key in tensors}


def unet_convolutions(server: ComfyServer) -> dict[str, tuple[int, ...]]:
    """The checkpoint's UNet convolution weights (4-D), by module path: read from the file, not the pack."""
    prefix = "model.diffusion_model."
    with safe_open(str(server.models_dir / "checkpoints" / CKPT), framework="pt") as handle:
        return {key[len(prefix):-len(".weight")]: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()
                if key.startswith(prefix) and key.endswith(".weight") and len(handle.get_slice(key).get_shape()) == 4}


@pytest.mark.parametrize("adapter", ["lora", "loha", "lokr", "dora"])
def test_conv_rank_adds_adapters_to_the_resblock_convolutions_and_nowhere_else(runs, adapter):
    server = runs["server"]
    plain, locon = load_file(str(lora_path(server, "plain"))), load_file(str(lora_path(server, adapter)))
    linear_set = stems(plain)  # the same layers as lora without conv_rank, whatever the type
    added = stems(locon) - linear_set
    assert linear_set <= stems(locon)
    assert added and all(RESBLOCK_CONV.search(stem) for stem in added), sorted(added)
    # Every convolution of the UNet is adapted except its input and output convolutions (which kohya does not
    # train either) and the transformers' 1x1 projections (in the linear set already).
    convolutions = unet_convolutions(server)
    others = [path for path in convolutions if path in ("input_blocks.0.0", "out.2") or path.endswith(("proj_in", "proj_out"))]
    assert len(others) == 4
    assert len(added) == len(convolutions) - len(others)
    for stem in added:
        tensors = {key.split(".", 1)[1]: value for key, value in locon.items() if key.split(".", 1)[0] == stem}
        pointwise = stem.endswith("conv_shortcut")
        assert float(tensors["alpha"]) == pytest.approx(ALPHA if pointwise else CONV_ALPHA if adapter != "lokr"
                                                        else float(tensors["alpha"]))
        if adapter in ("lora", "dora"):  # kohya's LoCon layout: down [rank, in, k, k], up [out, rank, 1, 1]
            down, up = tensors["lora_down.weight"], tensors["lora_up.weight"]
            assert down.shape[0] == (RANK if pointwise else CONV_RANK)
            assert down.shape[-2:] == ((1, 1) if pointwise else (3, 3)) and up.shape[-2:] == (1, 1)
        if adapter == "loha":
            assert tensors["hada_w1_b"].shape[0] == (RANK if pointwise else CONV_RANK)


@pytest.mark.parametrize("adapter", ["lora", "loha", "lokr", "dora"])
def test_the_file_says_conv_dim_and_conv_alpha_as_kohya_writes_them(runs, adapter):
    with safe_open(str(lora_path(runs["server"], adapter)), framework="pt") as handle:
        meta = handle.metadata()
    args = json.loads(meta["ss_network_args"])
    assert (args["conv_dim"], args["conv_alpha"]) == (str(CONV_RANK), "2")
    assert json.loads(meta["lora_lab_config"])["lora"]["conv_rank"] == CONV_RANK
    with safe_open(str(lora_path(runs["server"], "plain")), framework="pt") as handle:
        assert "conv_dim" not in json.loads(handle.metadata()["ss_network_args"])


@pytest.mark.parametrize("adapter", ["lora", "loha", "lokr", "dora"])
def test_the_stock_lora_loader_reads_every_key_and_draws_the_training_picture(runs, adapter):
    server, nodes = runs["server"], runs["nodes"][adapter]
    assert "lora key not loaded" not in runs["after_log"]
    assert "ERROR" not in runs["after_log"]
    loaded = pixels(server, runs["after"], nodes["lora_loader"])
    assert np.array_equal(loaded, pixels(server, runs["train"], nodes["in_memory"]))
    # The picture drawn at the last step with the peft adapter live: equal up to float32 rounding of the weights,
    # which 8 sampler steps on a random model can move by a level of 8-bit rounding (as test_adapter_types).
    assert np.abs(loaded - pixels(server, runs["train"], nodes["train_time"])).max() <= 2


def test_the_conv_adapters_change_the_picture_beyond_the_linear_ones(runs):
    """Same seed and settings: the LoRA with conv layers draws something else than the one without."""
    server = runs["server"]
    plain = latents(server, runs["after"], runs["nodes"]["plain"]["lora_loader_latent"])
    locon = latents(server, runs["after"], runs["nodes"]["lora"]["lora_loader_latent"])
    base = latents(server, runs["after"], runs["base"][1])
    assert (locon - plain).abs().mean().item() > 0.05 * (plain - base).abs().mean().item()
