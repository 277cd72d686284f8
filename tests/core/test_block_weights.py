"""Block weights on a small network named like a UNet: which adapter tensors each group holds, which are
frozen, and the learning rate each optimizer param group gets (the real UNet and DiT: the integration tests)."""

from __future__ import annotations

import pytest
from torch import nn

from trainer_core.adapters.config import LoRAConfig
from trainer_core.adapters.inject import inject_adapter
from trainer_core.training.block_weights import optimizer_groups, weighted_parameters
from trainer_core.training.results import TrainingError


class SpatialTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q = nn.Linear(16, 16)


class Net(nn.Module):
    """Two grouped blocks and a transformer block outside every group."""

    def __init__(self):
        super().__init__()
        self.input_blocks = nn.ModuleList([SpatialTransformer()])
        self.output_blocks = nn.ModuleList([SpatialTransformer()])
        self.extra = SpatialTransformer()


def test_each_group_gets_its_rate_a_zero_group_is_frozen_and_ungrouped_layers_keep_the_full_rate():
    network = Net()
    adapter = inject_adapter(network, LoRAConfig(rank=2, alpha=2, input_blocks_lr_weight=0.0,
                                                 output_blocks_lr_weight=0.25), seed=0)
    weighted = weighted_parameters(adapter)
    names = {id(p): n for n, p in adapter.named_parameters().items()}
    by_weight = {weight: sorted(names[id(p)].split(".")[0] for p in params) for weight, params in weighted}
    assert by_weight == {1.0: ["extra", "extra"], 0.25: ["output_blocks", "output_blocks"]}
    assert [weight for weight, _ in weighted] == [1.0, 0.25]  # the full rate first: the one the loss curve plots
    frozen = [n for n, p in adapter.named_parameters().items() if not p.requires_grad]
    assert sorted(frozen) == sorted(n for n in names.values() if n.startswith("input_blocks."))
    params = [p for _, ps in weighted for p in ps]
    groups = optimizer_groups(params, [(w, len(ps)) for w, ps in weighted], None, 1e-3, 0.0, set_rate=True)
    assert [(g["lr"], len(g["params"])) for g in groups] == [(1e-3, 2), (pytest.approx(2.5e-4), 2)]
    adapter.remove()


def test_all_the_trained_groups_at_zero_is_an_error_before_training():
    network = Net()
    del network.extra
    adapter = inject_adapter(network, LoRAConfig(rank=2, alpha=2, input_blocks_lr_weight=0.0,
                                                 output_blocks_lr_weight=0.0), seed=0)
    with pytest.raises(TrainingError, match="nothing would train: set at least one of these above 0"):
        weighted_parameters(adapter)
    adapter.remove()
    with pytest.raises(ValueError, match="every block learning-rate weight is 0"):
        LoRAConfig(**dict.fromkeys(LoRAConfig().block_lr_weights(), 0.0))


@pytest.mark.parametrize("saved, message", [
    ({"conv_rank": 4}, "was trained with conv_rank 4, this run has 0: set conv_rank as in that run"),
    ({"block_lr_weights": {**LoRAConfig().block_lr_weights(), "output_blocks_lr_weight": 0.5}},
     "other block learning-rate weights (output_blocks_lr_weight 0.5): set them as in that run"),
])
def test_a_resume_with_another_conv_rank_or_other_block_weights_is_refused_with_what_to_set(saved, message):
    from types import SimpleNamespace

    from trainer_core.training.bookkeeping import load_state

    run = SimpleNamespace(adapter=SimpleNamespace(config=LoRAConfig(rank=2), targets=["input_blocks.0.to_q"]))
    state = {"adapter_type": "lora", "rank": 2, "targets": ["input_blocks.0.to_q"], **saved}
    with pytest.raises(TrainingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_state(run, state, None)  # type: ignore[arg-type]
