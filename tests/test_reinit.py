"""reinit against its definition: the top k layers and the pooler drawn afresh with BERT's
initialiser statistics, everything below untouched, k = 0 is vanilla, draws fixed by the seed."""

from __future__ import annotations

import math

import pytest
import torch
from optuna.distributions import IntDistribution

from regbench.errors import RegbenchError
from regbench.harness import set_up
from regbench.modeling import load_model
from regbench.plugins import build
from regbench.registry.reinit import Reinit
from regbench.tasks import get_task

RTE = get_task("rte")
LAYERS, STD = 6, 0.02  # MiniLM-L6, and its config's initializer_range


def _reinit(seed: int = 0, **params) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A fresh MiniLM set up with `Reinit(**params)` after seeding the global RNG with `seed`, as
    the harness does; and its weights from before."""
    model, head = load_model("minilm", RTE, seed=seed)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(seed)
    set_up(Reinit(**params), model, RTE, head)
    return model, before


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()


def _redrawn(name: str, k: int, pooler: bool = True) -> bool:
    """Whether the parameter `name` belongs to the top k layers or (with them) the pooler."""
    if name.startswith("bert.encoder.layer."):
        return int(name.split(".")[3]) >= LAYERS - k
    return pooler and k > 0 and name.startswith("bert.pooler.")


def test_top_layers_and_pooler_are_redrawn_with_the_initialiser_statistics():
    model, before = _reinit(k=2)
    for name, p in model.named_parameters():
        if not _redrawn(name, 2):
            assert torch.equal(p, before[name]), f"{name} changed"
            continue
        if name.endswith("LayerNorm.weight"):
            assert torch.all(p == 1), name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name
        else:  # a linear weight: N(0, STD²), drawn independently of the pretrained one
            n = p.numel()
            # 5 standard errors: the mean's is STD / √n, the std's about STD / √(2n), a
            # correlation's 1 / √n.
            assert abs(_correlation(p, before[name])) < 5 / math.sqrt(n), name
            assert abs(p.mean().item()) < 5 * STD / math.sqrt(n), name
            assert p.std().item() == pytest.approx(STD, rel=5 / math.sqrt(2 * n)), name
    # The pretrained values were not these: the test above can tell.
    assert not torch.all(before["bert.encoder.layer.5.output.LayerNorm.weight"] == 1)
    assert before["bert.encoder.layer.5.attention.self.query.weight"].std() > 3 * STD


def test_k_zero_changes_nothing_and_the_pooler_can_stay():
    model, before = _reinit(k=0)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())

    model, before = _reinit(k=1, pooler=False)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) == (not _redrawn(name, 1, pooler=False)), name


def test_draws_are_fixed_by_the_seed_and_leave_the_dropout_stream_alone():
    torch.manual_seed(3)
    stream = torch.rand(8)  # what dropout would draw first in a vanilla run of seed 3
    first, _ = _reinit(seed=3, k=1)
    assert torch.equal(torch.rand(8), stream)  # the global RNG left as the harness seeded it
    again, _ = _reinit(seed=3, k=1)
    other, _ = _reinit(seed=4, k=1)
    top = "bert.encoder.layer.5.attention.self.query.weight"
    assert torch.equal(first.get_parameter(top), again.get_parameter(top))
    assert not torch.equal(first.get_parameter(top), other.get_parameter(top))
    # The head comes from a generator seeded with the same number; the re-init does not repeat it.
    head = first.classifier.weight  # 2 × 384
    assert abs(_correlation(first.get_parameter(top)[:2], head)) < 5 / math.sqrt(head.numel())


def test_parameters_that_transformers_marks_as_loaded_are_redrawn_too():
    model, head = load_model("minilm", RTE, seed=0)
    for p in model.parameters():  # as `from_pretrained` leaves them in transformers ≥ 5
        p._is_hf_initialized = True
    query = model.bert.encoder.layer[5].attention.self.query.weight
    before = query.detach().clone()
    set_up(Reinit(k=1), model, RTE, head)
    assert abs(_correlation(query, before)) < 5 / math.sqrt(query.numel())


def test_k_is_bounded_by_half_the_depth_and_searched_up_to_it():
    model, head = load_model("minilm", RTE, seed=0)
    with pytest.raises(RegbenchError, match=r"k = 4 is not allowed; it must be .*≤ 3"):
        set_up(Reinit(k=4), model, RTE, head)
    with pytest.raises(RegbenchError, match=r"k = 4 is not allowed"):
        build("reinit", {"k": 4}, layers=LAYERS)
    assert type(build("reinit")) is Reinit and Reinit.defaults == {"k": 1, "pooler": True}
    assert Reinit().extra_passes() == 0.0 and Reinit().setup_passes() == 0.0
    assert Reinit.search_space(LAYERS) == {"k": IntDistribution(0, 3)}
    assert Reinit.search_space(12) == {"k": IntDistribution(0, 6)}
