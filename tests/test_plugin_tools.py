"""regbench.plugin_tools against what each helper promises: replayed draws, seeded draws apart
from the run's stream, the run's generator, the loop's autocast, weight copies and swaps."""

from __future__ import annotations

import torch

from regbench.harness import set_up
from regbench.plugin import Regularizer
from regbench.plugin_tools import (
    autocast,
    averaged_tensors,
    drawn_apart,
    plugin_generator,
    pretrained_and_head,
    replayed,
    rng_state,
    snapshot,
    squared_norm,
    swap,
)
from regbench.tasks import get_task

CPU = torch.device("cpu")
RTE = get_task("rte")


def test_a_replayed_block_draws_the_first_draws_again_and_the_stream_goes_on_untouched():
    dropout = torch.nn.Dropout(0.5)
    ones = torch.ones(64)
    torch.manual_seed(5)
    first, after = dropout(ones), torch.rand(4)  # what a step draws without any replay
    torch.manual_seed(5)
    saved = rng_state(CPU)
    assert torch.equal(dropout(ones), first)
    with replayed(saved, CPU):
        again = dropout(ones)
    assert torch.equal(again, first)  # the same mask, zeros in the same places
    assert torch.equal(torch.rand(4), after)  # the rest of the step draws as it would have


def test_draws_apart_are_fixed_by_the_seed_and_leave_the_global_stream_alone():
    def draw(seed):
        torch.manual_seed(seed)
        with drawn_apart(CPU):
            inside = torch.rand(8)
        return inside, torch.rand(8)

    torch.manual_seed(3)
    stream = torch.rand(8)
    inside, outside = draw(3)
    assert torch.equal(outside, stream)  # the run's dropout stream, as if nothing was drawn
    assert torch.equal(draw(3)[0], inside) and not torch.equal(draw(4)[0], inside)
    assert not torch.equal(inside, stream)


def test_the_state_holds_the_runs_seed_and_a_generator_of_its_own(tiny_bert):
    model, head = tiny_bert
    state = set_up(Regularizer(), model, RTE, head, seed=11)
    assert state.seed == 11
    drawn = torch.rand(1000, generator=state.generator)
    assert torch.equal(drawn, torch.rand(1000, generator=plugin_generator(11, CPU)))
    # Neither the head's generator (seeded with the seed) nor dropout's stream repeats it.
    head_stream = torch.rand(1000, generator=torch.Generator().manual_seed(11))
    torch.manual_seed(11)
    for other in (head_stream, torch.rand(1000)):
        assert abs(torch.corrcoef(torch.stack([drawn, other]))[0, 1]) < 0.15
    assert not torch.equal(drawn, torch.rand(1000, generator=plugin_generator(12, CPU)))


def test_autocast_computes_in_bf16_exactly_when_the_run_does():
    linear = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast(CPU, True):
        assert linear(x).dtype == torch.bfloat16
    with autocast(CPU, False):
        assert linear(x).dtype == torch.float32


def test_snapshot_and_swap_exchange_weights_exactly_and_keep_the_live_tensors(tiny_bert):
    model, _ = tiny_bert
    live = averaged_tensors(model)
    assert len(live) == len(list(model.parameters()))  # BERT's only buffers are integer ids
    kept = snapshot(live)
    original = [k.clone() for k in kept]
    assert all(not k.requires_grad and k.data_ptr() != t.data_ptr()
               for k, t in zip(kept, live, strict=True))
    with torch.no_grad():
        for t in live:
            t.add_(1.0)
    moved = snapshot(live)
    identities = [id(t) for t in live]
    swap(live, kept)
    assert [id(t) for t in live] == identities
    assert all(torch.equal(a, b) for a, b in zip(live, original, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(kept, moved, strict=True))


def test_pretrained_and_head_split_the_trainable_parameters(tiny_bert):
    model, head = tiny_bert
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    state = set_up(Regularizer(), model, RTE, head)
    pretrained, new = pretrained_and_head(model, state)
    assert {id(p) for p in new} == {id(model.classifier.weight), id(model.classifier.bias)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in pretrained} == {id(p) for p in trainable} - {id(p) for p in new}


def test_squared_norm_is_the_sum_of_squares():
    tensors = [torch.tensor([3.0, 4.0]), torch.tensor([[1.0, 2.0], [2.0, 0.0]])]
    assert squared_norm(tensors).item() == 34.0
    assert squared_norm([]).item() == 0.0
