"""The noise-stability diagnostic against its definition, on a tiny BERT and on a real run."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from regbench import noise_stability as noise_stability_module
from regbench.features import Examples
from regbench.harness import fine_tune
from regbench.noise_stability import noise_stability
from regbench.registry.vanilla import Vanilla

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32)
    return BertForSequenceClassification(config).train()  # the diagnostic switches to eval


@pytest.fixture(scope="module")
def sentences():
    generator = torch.Generator().manual_seed(1)
    lengths = [5, 9, 12, 7, 16, 3]
    ids = [torch.randint(1, 50, (n,), generator=generator).tolist() for n in lengths]
    return Examples(ids, None, torch.zeros(len(ids), dtype=torch.long).numpy())


def test_no_noise_moves_nothing(tiny, sentences):
    report = noise_stability(tiny, sentences, pad_id=0, device=CPU, scale=0.0)
    assert report["summary"] == 0.0
    for measure in ("table", "distance"):
        assert all(v == 0.0 for row in report[measure] for v in row if v is not None)


def test_the_noise_is_five_percent_of_the_layers_output_norm():
    """Of each token's norm, and so of the whole output's: the tokens' squared norms add up."""
    hidden = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(2)) * 4
    noise = noise_stability_module._noise(hidden, 0.05, torch.Generator().manual_seed(3))
    assert torch.allclose(noise.norm(dim=-1), 0.05 * hidden.norm(dim=-1))
    assert noise.norm().item() == pytest.approx(0.05 * hidden.norm().item(), rel=1e-5)


def test_one_row_per_injection_layer_and_a_change_for_each_layer_above(tiny, sentences):
    report = noise_stability(tiny, sentences, pad_id=0, device=CPU)
    for table in report["table"], report["distance"]:
        assert len(table) == 3 and all(len(row) == 3 for row in table)  # layers 0-2; 1-3 move
        for i, row in enumerate(table):
            assert all(v is None for v in row[:i]) and all(v > 0 for v in row[i:])


def test_twice_the_noise_moves_the_layers_about_twice_as_far(tiny, sentences):
    small = noise_stability(tiny, sentences, pad_id=0, device=CPU, scale=0.005)
    large = noise_stability(tiny, sentences, pad_id=0, device=CPU, scale=0.01)
    for row_small, row_large in zip(small["table"], large["table"], strict=True):
        for a, b in zip(row_small, row_large, strict=True):
            if a is not None:
                assert b / a == pytest.approx(2.0, rel=0.05)


def test_distance_and_change_are_means_over_real_tokens(tiny, sentences, monkeypatch):
    """With the noise fixed to one direction, each entry against an independent computation: a
    forward hook adds the noise to layer i's output and the whole model runs on from there. The
    layers at and below i do not move; each above moves by its distance, and its relative change
    is that distance over its own norm, token by token."""
    direction = torch.nn.functional.normalize(torch.randn(32), dim=0)

    def fixed(hidden, scale, generator):
        return scale * hidden.norm(dim=-1, keepdim=True) * direction

    monkeypatch.setattr(noise_stability_module, "_noise", fixed)
    report = noise_stability(tiny, sentences, pad_id=0, device=CPU)
    batch = sentences.collate(list(range(len(sentences))), pad_id=0)
    del batch["labels"]
    real = batch["attention_mask"].bool()
    tiny.eval()
    with torch.no_grad():
        clean = tiny.bert(**batch, output_hidden_states=True).hidden_states
        sources = [tiny.bert.embeddings, *tiny.bert.encoder.layer[:-1]]
        for i, source in enumerate(sources):
            hook = source.register_forward_hook(
                lambda module, args, out: (out[0] + fixed(out[0], 0.05, None), *out[1:])
                if isinstance(out, tuple) else out + fixed(out, 0.05, None))
            noisy = tiny.bert(**batch, output_hidden_states=True).hidden_states
            hook.remove()
            assert all(torch.equal(noisy[k], clean[k]) for k in range(i))
            for k in range(i + 1, 4):
                distance = (noisy[k] - clean[k]).norm(dim=-1)[real]
                ratio = distance / clean[k].norm(dim=-1)[real]
                assert report["distance"][i][k - 1] == pytest.approx(distance.mean().item(),
                                                                     rel=1e-4)
                assert report["table"][i][k - 1] == pytest.approx(ratio.mean().item(), rel=1e-4)
    tiny.train()


def test_the_model_is_left_as_it_was(tiny, sentences):
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    noise_stability(tiny, sentences, pad_id=0, device=CPU)
    assert tiny.training
    assert all(not layer._forward_pre_hooks for layer in tiny.bert.encoder.layer)
    assert all(torch.equal(p, before[n]) for n, p in tiny.named_parameters())


def test_every_tested_run_carries_it_and_tuning_runs_do_not(rte_data, tiny_recipe):
    tested = fine_tune(rte_data, Vanilla(), seed=1, recipe=tiny_recipe, progress=False)
    tuning = fine_tune(rte_data, Vanilla(), seed=1, recipe=tiny_recipe, progress=False,
                       test=False)
    assert tuning.noise_stability is None
    report = tested.noise_stability
    assert len(report["table"]) == len(report["distance"]) == 6
    assert report["summary"] == report["table"][0][5]
    assert 0 < report["summary"] < 1
    assert report["settings"] == {"scale": 0.05, "draws": 2, "examples": 32, "seed": 0}
