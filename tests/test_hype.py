"""hype against Yuan et al.'s perturbation: each layer's input, caught before and after the
plugin's hook, differs by σ·U(0, 1) (or σ·N(0, 1)) in training and not at all in evaluation; the
draws leave the run's dropout masks alone; under bf16 the noise survives."""

from __future__ import annotations

import pytest
import torch
from optuna.distributions import FloatDistribution

from regbench.harness import set_up
from regbench.plugin_tools import autocast
from regbench.plugins import build
from regbench.recipe import Recipe
from regbench.registry.hype import HyPe
from regbench.tasks import get_task

RTE = get_task("rte")


def _layer_inputs(model, prepend: bool) -> tuple[list[torch.Tensor], list]:
    """The hidden states entering each encoder layer, caught before (`prepend`) or after the
    plugin's own pre-hook."""
    caught = []
    hooks = [layer.register_forward_pre_hook(lambda module, args: caught.append(args[0]),
                                             prepend=prepend)
             for layer in model.bert.encoder.layer]
    return caught, hooks


@pytest.mark.parametrize("noise", ["uniform", "normal"])
def test_each_layers_input_gets_sigma_times_its_own_draw_in_training(minilm, rte_batch, noise):
    model, head = minilm
    model.train()
    hype = HyPe(sigma=0.01, noise=noise)
    set_up(hype, model, RTE, head, Recipe(precision="fp32"))
    before, hooks = _layer_inputs(model, prepend=True)
    after, more = _layer_inputs(model, prepend=False)
    model(**rte_batch)
    for hook in [*hooks, *more]:
        hook.remove()
    assert len(before) == len(after) == 6
    draws = torch.stack([(a - b) / 0.01 for a, b in zip(after, before, strict=True)]).double()
    # 6 layers × 8 sequences × their tokens × 384: U(0, 1)'s or N(0, 1)'s moments, closely.
    if noise == "uniform":
        assert draws.min() >= -1e-3 and draws.max() <= 1 + 1e-3
        assert draws.mean().item() == pytest.approx(0.5, abs=3e-3)
        assert draws.var().item() == pytest.approx(1 / 12, abs=3e-3)
    else:
        assert draws.mean().item() == pytest.approx(0.0, abs=3e-3)
        assert draws.std().item() == pytest.approx(1.0, abs=3e-3)
    # A fresh draw per layer.
    assert not torch.allclose(draws[0], draws[1])


def test_evaluation_sees_no_noise_and_training_keeps_vanillas_dropout(minilm, rte_batch):
    model, head = minilm
    hype = HyPe(sigma=0.01)
    set_up(hype, model, RTE, head, Recipe(precision="fp32"))
    model.eval()
    with torch.no_grad():
        evaluated = model(**rte_batch).logits
        hype.after_training(hype.state)  # the hooks gone: the model as vanilla has it
        torch.testing.assert_close(model(**rte_batch).logits, evaluated, rtol=0, atol=0)
    # The noise comes from the run's generator: the global one, dropout's, is left as vanilla's.
    model.train()
    hype = HyPe(sigma=0.01)
    set_up(hype, model, RTE, head, Recipe(precision="fp32"))
    torch.manual_seed(5)
    model(**rte_batch)
    with_hype = torch.get_rng_state()
    hype.after_training(hype.state)
    torch.manual_seed(5)
    model(**rte_batch)
    assert torch.equal(with_hype, torch.get_rng_state())


def test_under_bf16_the_declared_fp32_parts_keep_the_noise_as_fp32_sees_it(minilm, rte_batch):
    """σ = 1e-5 moves MiniLM's loss by about 2e-7 in fp32. With the layers and head that hype
    declares in fp32, a bf16 run computes that loss exactly; without them, bf16's rounding of
    the noisy states moves it a hundred times as much."""
    model, head = minilm
    model.train()

    def loss(sigma: float, precision: str, parts: bool = True) -> float:
        hype = HyPe(sigma=sigma)
        state = set_up(hype, model, RTE, head, Recipe(precision=precision))
        if not parts:
            state.fp32.off()
        torch.manual_seed(0)  # the same dropout masks in every pass
        with torch.no_grad(), autocast(state.device, state.bf16):
            value = model(**rte_batch).loss.item()
        hype.after_training(state)
        state.fp32.close()
        return value

    in_fp32 = loss(1e-5, "fp32") - loss(0.0, "fp32")
    assert 0 < abs(in_fp32) < 1e-5
    assert loss(1e-5, "bf16") == pytest.approx(loss(1e-5, "fp32"), rel=1e-6, abs=0)
    assert loss(1e-5, "bf16") - loss(0.0, "bf16") == pytest.approx(in_fp32, rel=0.05)
    assert abs(loss(1e-5, "bf16", parts=False) - loss(0.0, "bf16", parts=False)) > 20 * abs(
        in_fp32)


def test_registration_defaults_cost_and_search_space():
    hype = build("hype")
    assert type(hype) is HyPe and hype.params == {"sigma": 1e-5, "noise": "uniform"}
    assert hype.extra_passes() == 0.0 and hype.setup_passes() == 0.0
    assert hype.fp32_parts(3) == ("layer.0", "layer.1", "layer.2", "head")
    assert HyPe.search_space(6) == {"sigma": FloatDistribution(1e-6, 1e-4, log=True)}
