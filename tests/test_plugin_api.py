"""The plugin contract as a plugin author meets it: the hooks in their order, the state they read,
what they may change (rates, schedule, gradients, evaluated weights), declared hyperparameters,
and the checks a plugin passes when it is loaded."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from optuna.distributions import FloatDistribution, IntDistribution
from transformers import get_linear_schedule_with_warmup

from regbench import plugins
from regbench.errors import RegbenchError
from regbench.harness import (
    evaluate,
    evaluated_weights,
    fine_tune,
    prepare,
    set_up,
    training_step,
)
from regbench.modeling import load_tokenizer
from regbench.params import Param
from regbench.plugin import Loss, Regularizer
from regbench.plugin_tools import autocast, model_parts
from regbench.recipe import Recipe
from regbench.runner import Plan
from regbench.suite import Cell, parse_suite
from regbench.tasks import get_task


class Recording(Regularizer):
    """Records every hook with the state's step, in the order the harness calls them."""

    name = "recording"
    needs_hidden_states = True

    def __init__(self, **params):
        super().__init__(**params)
        self.calls = []

    def _log(self, hook, *detail):
        self.calls.append((hook, self.state.step, *detail))

    def setup(self, model, context):
        self._log("setup", sorted(context.head_parameters), context.total_steps)

    def param_groups(self, model):
        self._log("param_groups")
        return super().param_groups(model)

    def schedule(self, state):
        self._log("schedule")
        return super().schedule(state)

    def before_forward(self, state):
        self._log("before_forward", len(state.batch["input_ids"]))

    def loss(self, model, batch, outputs, task_loss):
        self._log("loss", len(outputs.hidden_states))
        return task_loss

    def before_optimizer_step(self, state):
        self._log("before_optimizer_step")

    def after_step(self, model):
        self._log("after_step")

    def before_evaluate(self, state):
        self._log("before_evaluate")

    def after_evaluate(self, state):
        self._log("after_evaluate")

    def after_training(self, state):
        self._log("after_training")


def test_hooks_are_called_in_the_contracts_order(rte_data):
    # 32 examples in batches of 8, one epoch: 4 steps; two validation passes, at 2 and 4.
    recipe = Recipe(epochs=1, min_steps=0, batch_size=8, max_length=64, evaluations=2)
    plugin = Recording()
    fine_tune(rte_data, plugin, seed=1, recipe=recipe, progress=False,
              on_evaluate=lambda step, score: None)
    step = [("before_forward", "·", 8), ("loss", "·", 7),  # MiniLM: 6 layers and embeddings
            ("before_optimizer_step", "·"), ("after_step", "·")]
    evaluation = [("before_evaluate", "·"), ("after_evaluate", "·")]
    expected = [("setup", "·", ["classifier.bias", "classifier.weight"], 4),
                ("param_groups", "·"), ("schedule", "·"), *step, *step, *evaluation,
                *step, *step, *evaluation, ("after_training", "·"), *evaluation]
    assert [(hook, "·", *rest) for hook, _, *rest in plugin.calls] == expected
    steps = [s for hook, s, *_ in plugin.calls]
    # A step's hooks before the optimiser's step see t − 1 steps taken, after_step sees t.
    assert steps[3:7] == [0, 0, 0, 1] and steps[7:11] == [1, 1, 1, 2]
    assert steps[-3:] == [4, 4, 4]


class Rates(Regularizer):
    """Two groups at different rates, and the state's view of them after every step."""

    name = "rates"

    def param_groups(self, model):
        encoder = [p for n, p in model.named_parameters() if "classifier" not in n]
        head = [p for n, p in model.named_parameters() if "classifier" in n]
        base = self.state.recipe.learning_rate
        return [{"params": encoder, "lr": base / 4}, {"params": head, "lr": base}]

    def setup(self, model, context):
        self.seen = []

    def after_step(self, model):
        state = self.state
        self.seen.append((state.step, state.epoch, tuple(state.lrs), state.total_steps))


def test_the_state_holds_the_step_epoch_and_scheduled_rates_of_each_group(rte_data):
    recipe = Recipe(epochs=2, min_steps=0, batch_size=8, max_length=64, evaluations=1,
                    learning_rate=1e-3, warmup_ratio=0.25)
    plugin = Rates()
    fine_tune(rte_data, plugin, seed=1, recipe=recipe, progress=False, test=False)
    # Hugging Face's linear schedule, on a throwaway optimiser: the rate each step ran at.
    probe = torch.optim.SGD([torch.zeros(1)], lr=1.0)
    reference = get_linear_schedule_with_warmup(probe, 2, 8)
    factors = []
    for _ in range(8):
        factors.append(probe.param_groups[0]["lr"])
        probe.step()
        reference.step()
    assert [(s, e, t) for s, e, _, t in plugin.seen] == [
        (s, s // 4, 8) for s in range(1, 9)]
    for (_, _, rates, _), factor in zip(plugin.seen, factors, strict=True):
        assert rates == pytest.approx((1e-3 / 4 * factor, 1e-3 * factor))


def test_the_recipes_schedule_is_hugging_faces_linear_schedule():
    probe = torch.optim.SGD([torch.zeros(1)], lr=1.0)
    reference = get_linear_schedule_with_warmup(probe, 30, 300)
    recipe = Recipe()
    for step in range(301):
        assert recipe.lr_factor(step, 300) == pytest.approx(reference.lr_lambdas[0](step))


class Constant(Regularizer):
    name = "constant"

    def schedule(self, state):
        return lambda step: 0.5

    def setup(self, model, context):
        self.rates = []

    def after_step(self, model):
        self.rates.append(self.state.lrs[0])


def test_a_plugin_can_replace_the_schedule(rte_data, tiny_recipe):
    plugin = Constant()
    fine_tune(rte_data, plugin, seed=1, recipe=tiny_recipe, progress=False, test=False)
    assert plugin.rates == [tiny_recipe.learning_rate / 2] * 4


class FrozenLayer(Regularizer):
    """Zeroes one layer's gradients after clipping, and records the clipped norm it saw."""

    name = "frozen_layer"

    def setup(self, model, context):
        self.layer = list(model.base_model.encoder.layer[0].parameters())
        self.norms = []

    def before_optimizer_step(self, state):
        grads = [p.grad for p in state.model.parameters() if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads])).item())
        for p in self.layer:
            p.grad = None


def test_gradients_changed_after_clipping_decide_the_step(rte_data, tiny_recipe):
    plugin = FrozenLayer()
    state = prepare(rte_data, plugin, seed=1, recipe=tiny_recipe)
    before = [p.detach().clone() for p in plugin.layer]
    fine_tune(rte_data, plugin, seed=1, recipe=tiny_recipe, progress=False, test=False)
    after = list(plugin.state.model.base_model.encoder.layer[0].parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert plugin.state is not state  # each run binds a fresh state
    assert max(plugin.norms) <= tiny_recipe.max_grad_norm * (1 + 1e-5)  # clipped already


class Zeroed(Regularizer):
    """Evaluates a head of zeros in place of the trained one, and puts the trained one back."""

    name = "zeroed"

    def before_evaluate(self, state):
        self.kept = state.model.classifier.weight.detach().clone()
        with torch.no_grad():
            state.model.classifier.weight.zero_()
            state.model.classifier.bias.fill_(0.0)
            state.model.classifier.bias[1] = 1.0  # every example predicted as class 1

    def after_evaluate(self, state):
        with torch.no_grad():
            state.model.classifier.weight.copy_(self.kept)


def test_a_plugin_chooses_the_evaluated_weights(rte_data, tiny_recipe):
    plugin = Zeroed()
    result = fine_tune(rte_data, plugin, seed=1, recipe=tiny_recipe, progress=False)
    share_of_class_1 = float((rte_data.test.labels == 1).mean())
    assert result.test["accuracy"] == pytest.approx(share_of_class_1)
    assert torch.equal(plugin.state.model.classifier.weight, plugin.kept)


class Reader(Regularizer):
    """Reads the training split in setup, as a Fisher estimate would."""

    name = "reader"

    def setup(self, model, context):
        self.batches = list(context.training_batches())


def test_setup_reads_the_training_split_and_leaves_the_run_unchanged(rte_data, tiny_recipe):
    from regbench.registry.vanilla import Vanilla

    plugin = Reader()
    read = fine_tune(rte_data, plugin, seed=2, recipe=tiny_recipe, progress=False)
    plain = fine_tune(rte_data, Vanilla(), seed=2, recipe=tiny_recipe, progress=False)
    assert sum(len(b["labels"]) for b in plugin.batches) == len(rte_data.train)
    seen = sorted(tuple(row[row != 0].tolist()) for b in plugin.batches for row in b["input_ids"])
    assert seen == sorted(tuple(ids) for ids in rte_data.train.input_ids)
    assert read.validation == plain.validation and read.test == plain.test


def test_evaluate_on_the_prepared_model_matches_the_run(rte_data, tiny_recipe):
    """`prepare` is the run's own start: the untrained model it builds scores as a fresh run's."""
    from regbench.registry.vanilla import Vanilla

    state = prepare(rte_data, Vanilla(), seed=3, recipe=tiny_recipe)
    pad = load_tokenizer("minilm").pad_token_id
    first = evaluate(state.model, rte_data.test, rte_data.task, pad, 64, state.device, state.bf16)
    again = prepare(rte_data, Vanilla(), seed=3, recipe=tiny_recipe)
    assert first == evaluate(again.model, rte_data.test, rte_data.task, pad, 64, again.device,
                             again.bf16)


# -- the loop's rules: gradients and the task loss ------------------------------------------------

class GradientRules(Regularizer):
    """Leaves gradients behind in setup, runs a backward pass of its own in `loss` and returns
    the task loss for the harness's; records what each hook finds."""

    name = "gradient_rules"

    def __init__(self, batch):
        super().__init__()
        self.batch, self.found = batch, []

    def setup(self, model, state):
        model(**self.batch).loss.backward()  # a Fisher estimate that does not clean up

    def before_forward(self, state):
        self.found.append(all(p.grad is None for p in state.model.parameters()))

    def loss(self, model, batch, outputs, task_loss):
        assert task_loss is outputs.loss and task_loss.requires_grad
        self.losses = (task_loss.detach(),
                       torch.nn.functional.cross_entropy(outputs.logits.detach(), batch["labels"]))
        self.expected = torch.autograd.grad(task_loss, list(model.parameters()),
                                            retain_graph=True)  # adds to no .grad
        (2 * task_loss).backward(retain_graph=True)
        return task_loss

    def before_optimizer_step(self, state):
        self.seen = _gradients(state.model)


@pytest.mark.parametrize("max_norm", [1e6, 0.01])
def test_gradients_start_each_step_at_none_and_add_up_what_loss_and_the_harness_backpropagate(
        tiny_bert, tiny_batches, max_norm):
    model, head = tiny_bert
    plugin = GradientRules(tiny_batches[2])
    recipe = Recipe(max_grad_norm=max_norm, epochs=0, min_steps=10, precision="fp32")
    state = set_up(plugin, model, get_task("rte"), head, recipe=recipe)
    for batch in tiny_batches[:2]:
        state.batch = batch
        training_step(state, plugin)
        # task_loss is the model's own loss: the batch's mean cross-entropy.
        torch.testing.assert_close(*plugin.losses)
        summed = [3 * g for g in plugin.expected]  # 2× in `loss`, 1× by the harness
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in summed]))
        scale = min(1.0, max_norm / norm.item())
        for seen, grad in zip(plugin.seen, summed, strict=True):
            torch.testing.assert_close(seen, scale * grad, rtol=1e-5, atol=1e-8)
    assert plugin.found == [True, True]  # cleared after setup, and after every step


# -- what `loss` returns ----------------------------------------------------------------------

NO_CLIPPING = Recipe(max_grad_norm=1e6, epochs=0, min_steps=10, precision="fp32")


def _gradients(model):
    return [p.grad.clone() for p in model.parameters()]


class Separate(Regularizer):
    """Reports the task loss, and backpropagates twice it, or runs that backward pass itself."""

    name = "separate"

    def __init__(self, itself: bool):
        super().__init__()
        self.itself = itself

    def loss(self, model, batch, outputs, task_loss):
        if self.itself:
            (2 * task_loss).backward()
            return Loss(backward=None, reported=task_loss)
        return Loss(backward=2 * task_loss, reported=task_loss)

    def before_optimizer_step(self, state):
        self.seen = _gradients(state.model)


@pytest.mark.parametrize("itself", [False, True])
def test_loss_reports_one_tensor_and_backpropagates_another(tiny_bert, tiny_batches, itself):
    model, head = tiny_bert
    plugin = Separate(itself)
    state = set_up(plugin, model, get_task("rte"), head, recipe=NO_CLIPPING)
    state.batch = tiny_batches[0]
    task_loss = model(**state.batch).loss  # tiny_bert has no dropout: the step's own pass
    expected = torch.autograd.grad(task_loss, list(model.parameters()))
    assert training_step(state, plugin) == pytest.approx(task_loss.item())
    for seen, grad in zip(plugin.seen, expected, strict=True):
        torch.testing.assert_close(seen, 2 * grad)


class Diverging(Regularizer):
    name = "diverging"

    def loss(self, model, batch, outputs, task_loss):
        return Loss(backward=task_loss, reported=task_loss * float("nan"))


def test_the_reported_loss_decides_divergence(tiny_bert, tiny_batches):
    model, head = tiny_bert
    plugin = Diverging()
    state = set_up(plugin, model, get_task("rte"), head, recipe=NO_CLIPPING)
    state.batch = tiny_batches[0]
    before = [p.detach().clone() for p in model.parameters()]
    assert math.isnan(training_step(state, plugin))
    assert state.step == 0 and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


# -- declared precision --------------------------------------------------------------------------

class PartlyFP32(Regularizer):
    name = "partly_fp32"

    def fp32_parts(self, layers):
        return (f"layer.{layers - 1}", "head")


def test_declared_parts_compute_in_fp32_in_training_and_evaluation_in_the_runs_precision(
        tiny_bert, tiny_batches):
    model, head = tiny_bert
    plugin = PartlyFP32()
    state = set_up(plugin, model, get_task("rte"), head,
                   recipe=Recipe(precision="bf16", epochs=0, min_steps=10))
    computed_in = {}
    watched = {0: model.bert.encoder.layer[0].attention.self.query,
               1: model.bert.encoder.layer[1].attention.self.query, "head": model.classifier}
    for key, module in watched.items():
        module.register_forward_hook(
            lambda module, args, out, key=key: computed_in.__setitem__(key, out.dtype))
    bf16, fp32 = torch.bfloat16, torch.float32
    state.batch = tiny_batches[0]
    training_step(state, plugin)
    assert computed_in == {0: bf16, 1: fp32, "head": fp32}
    with evaluated_weights(state, plugin) as network, autocast(state.device, state.bf16):
        network(**tiny_batches[1])
    assert computed_in == {0: bf16, 1: bf16, "head": bf16}
    state.batch = tiny_batches[2]
    training_step(state, plugin)  # training again: the parts in fp32 again
    assert computed_in == {0: bf16, 1: fp32, "head": fp32}
    state.fp32.close()  # as the harness does after training
    assert not any("forward" in vars(module) for module in model.modules())


def test_parts_name_the_models_modules(tiny_bert):
    model, _ = tiny_bert
    layers = model.bert.encoder.layer
    assert model_parts(model, ["model", "embeddings", "layer.1", "head"]) == [
        model, model.bert.embeddings, layers[1], model.bert.pooler, model.dropout,
        model.classifier]
    with pytest.raises(RegbenchError, match=r"'layer\.2' names no part of "
                                            r"BertForSequenceClassification; the parts are model"):
        model_parts(model, ["layer.2"])


def test_the_run_key_holds_the_parts_in_fp32_where_a_plugin_names_any():
    plan = Plan.of(parse_suite({"name": "p", "tasks": ["rte"], "sizes": [16],
                                "regularizers": {"vanilla": {}, "lnsr": {"inject_layer": 4,
                                                                         "include_logits": True}}}))
    fixed = plan.suite.regularizers["lnsr"]
    assert plan.config(Cell("lnsr", "rte", 16), fixed, 1)["fp32"] == ["layer.4", "layer.5", "head"]
    assert "fp32" not in plan.config(Cell("vanilla", "rte", 16), {}, 1)


# -- pooled features ------------------------------------------------------------------------------

class Pooled(Regularizer):
    """Keeps what `loss` sees of the features the head read."""

    name = "pooled"
    needs_hidden_states = True

    def loss(self, model, batch, outputs, task_loss):
        self.seen = (outputs.pooled, outputs.hidden_states[-1], self.state.outputs.pooled)
        return task_loss


def _pooled(model, head, batch):
    plugin = Pooled()
    state = set_up(plugin, model.eval(), get_task("rte"), head, recipe=NO_CLIPPING)
    state.batch = batch
    training_step(state, plugin)
    pooled, last, on_state = plugin.seen
    assert on_state is pooled
    return pooled.detach(), last.detach()


def test_the_hooks_see_the_cls_poolers_features(tiny_bert, tiny_batches):
    model, head = tiny_bert
    pooled, last = _pooled(model, head, tiny_batches[0])
    dense = model.bert.pooler.dense
    torch.testing.assert_close(pooled, torch.tanh(last[:, 0] @ dense.weight.T + dense.bias))


def test_the_hooks_see_the_mean_of_the_real_tokens_under_mean_pooling(rte_batch):
    from regbench.modeling import load_model

    model, head = load_model("minilm", get_task("rte"), 0, pooling="mean")
    pooled, last = _pooled(model, head, rte_batch)
    mask = rte_batch["attention_mask"].bool()
    expected = torch.stack([h[m].mean(0) for h, m in zip(last, mask, strict=True)])
    torch.testing.assert_close(pooled, expected)


def test_the_hooks_see_the_cls_state_a_roberta_head_reads(tiny_batches):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    model = RobertaForSequenceClassification(RobertaConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=16, num_labels=2))
    pooled, last = _pooled(model, frozenset(), tiny_batches[0])
    torch.testing.assert_close(pooled, last[:, 0])


# -- declared hyperparameters --------------------------------------------------------------------

@pytest.mark.parametrize("param, value, expected", [
    (Param(0.1, gt=0), 2, 2.0),  # an int for a float becomes a float
    (Param(0.1, ge=0, le=1), 1, 1.0),
    (Param(3, ge=0), 0, 0),
    (Param(True), False, False),
    (Param("a", choices=("a", "b")), "b", "b"),
    (Param(None, kind=list, nullable=True), None, None),
    (Param(None, kind=list, nullable=True), [1.0, 2.0], [1.0, 2.0]),
    (Param(0, ge=0, le=lambda layers: layers - 1), 5, 5),
])
def test_a_declared_value_is_accepted(param, value, expected):
    checked = param.check(value, layers=6)
    assert checked == expected and type(checked) is type(expected)


@pytest.mark.parametrize("param, value, allowed", [
    (Param(0.1, gt=0), 0, "a number > 0"),
    (Param(0.1, gt=0), -1, "a number > 0"),
    (Param(0.1, gt=0), float("nan"), "a number > 0"),
    (Param(0.1, gt=0), float("inf"), "a number > 0"),
    (Param(0.1, gt=0), "abc", "a number > 0"),
    (Param(0.1, gt=0), True, "a number > 0"),  # YAML's `yes` is no number
    (Param(0.7, ge=0, le=1), 1.5, "a number ≥ 0 and ≤ 1"),
    (Param(3, ge=1), 2.5, "an integer ≥ 1"),
    (Param(3, ge=1), 0, "an integer ≥ 1"),
    (Param(True), "maybe", "true or false"),
    (Param(True), 1, "true or false"),
    (Param("a", choices=("a", "b")), "c", "one of 'a', 'b'"),
    (Param(None, kind=list, nullable=True), 3, "a list or null"),
    (Param(0, ge=0, le=lambda layers: layers - 1), 6, "an integer ≥ 0 and ≤ 5"),
])
def test_a_value_outside_its_declaration_says_what_is_allowed(param, value, allowed):
    with pytest.raises(ValueError) as caught:
        param.check(value, layers=6)
    assert str(caught.value) == allowed


def test_a_regularizers_errors_name_the_parameter_the_value_and_the_range():
    with pytest.raises(RegbenchError, match=r"'mixout': p = 1\.5 is not allowed; it must be a "
                                            r"number ≥ 0 and ≤ 1"):
        plugins.build("mixout", {"p": 1.5})
    with pytest.raises(RegbenchError, match=r"'smart': teacher = 'maybe' is not allowed; it must "
                                            r"be true or false"):
        plugins.build("smart", {"teacher": "maybe"})
    with pytest.raises(RegbenchError, match=r"'lnsr': inject_layer = 6 is not allowed; it must be "
                                            r"an integer ≥ 0 and ≤ 5"):
        plugins.build("lnsr", {"inject_layer": 6}, layers=6)
    with pytest.raises(RegbenchError, match=r"'l2sp' has no parameter gamma; its parameters are: "
                                            r"alpha, beta, decoupled"):
        plugins.build("l2sp", {"gamma": 1})


def test_every_parameter_value_is_filled_in_and_normalised():
    assert plugins.build("weight_decay", {"weight_decay": 1}).params == {"weight_decay": 1.0}
    assert plugins.get_regularizer("l2sp").check_params({"alpha": 1}) == {
        "alpha": 1.0, "beta": 0.01, "decoupled": False}


class FirstVersion(Regularizer):
    """A plugin of the first contract: a defaults dict and a search space, nothing declared."""

    name = "first_version"
    defaults = {"alpha": 1.0, "layer": 0, "mode": "a", "flag": False, "weights": None}

    @classmethod
    def search_space(cls, num_layers):
        return {"alpha": FloatDistribution(0.1, 10.0, log=True),
                "layer": IntDistribution(0, num_layers - 1)}


def test_a_first_version_plugin_gets_types_from_defaults_and_ranges_from_its_search_space():
    assert FirstVersion(alpha=2, mode="b", weights=[1, 2]).params["alpha"] == 2.0
    for bad, allowed in [({"alpha": 20.0}, "a number ≥ 0.1 and ≤ 10"),
                         ({"layer": 6}, "an integer ≥ 0 and ≤ 5"),
                         ({"mode": 3}, "a string"), ({"flag": "no"}, "true or false")]:
        with pytest.raises(RegbenchError, match=f"it must be {allowed}"):
            FirstVersion.check_params(bad, layers=6)
    # The range is the search space's, and the error says so.
    with pytest.raises(RegbenchError, match=r"alpha = 20\.0 is not allowed; it must be a number "
                                            r"≥ 0\.1 and ≤ 10 \(its search space's range: the "
                                            r"plugin declares no `hyperparameters`"):
        FirstVersion.check_params({"alpha": 20.0})


# -- plugins checked when they are loaded --------------------------------------------------------

GOOD = """
from optuna.distributions import FloatDistribution
from regbench.params import Param
from regbench.plugin import Loss, Regularizer
from regbench.plugin_tools import autocast, model_parts

class Plugin(Regularizer):
    name = "{name}"
    hyperparameters = {{"alpha": Param(1.0, gt=0)}}

    @classmethod
    def search_space(cls, num_layers):
        return {{"alpha": FloatDistribution(0.1, 10.0, log=True)}}
"""


@pytest.mark.parametrize("change, problem", [
    (("    name = \"{name}\"\n", ""), r"is named None, not 'faulty' as its entry point"),
    (("name = \"{name}\"", "name = \"other\""), r"is named 'other', not 'faulty'"),
    (("return {{\"alpha\": FloatDistribution(0.1, 10.0, log=True)}}",
      "return ({{\"alpha\": FloatDistribution(0.1, 10.0, log=True)}},)"),
     r"search_space returned a tuple, not a dict of distributions"),
    (("{{\"alpha\": FloatDistribution", "{{\"beta\": FloatDistribution"),
     r"search_space explores 'beta', which is not one of its parameters"),
    (("FloatDistribution(0.1, 10.0, log=True)}}", "[0.1, 10.0]}}"),
     r"search_space\['alpha'\] is not an Optuna distribution"),
    (("Param(1.0, gt=0)", "Param(-1.0, gt=0)"),
     r"alpha's default -1\.0 is not allowed by its declaration \(a number > 0\)"),
    (("Param(1.0, gt=0)", "Param(1.0, gt=0, le=5)"),
     r"alpha's search range 10\.0 is not allowed by its declaration"),
    (("class Plugin(Regularizer):", "class Plugin:"), r"is not a subclass of"),
    (("    @classmethod", "    def step_cost(self):\n        return 0.0\n\n    @classmethod"),
     r"step_cost must be a number > 0 \(1 \+ extra_passes by default\), not 0\.0"),
    (("    @classmethod",
      "    def setup_example_passes(self):\n        return -1\n\n    @classmethod"),
     r"setup_passes and setup_example_passes must be numbers ≥ 0, not \(0\.0, -1\)"),
])
def test_a_plugin_that_breaks_the_contract_is_reported_and_left_out(install_plugin, change,
                                                                     problem):
    install_plugin("good-dist", "good", GOOD.format(name="good"))
    source = GOOD.replace(*change).format(name="faulty")
    install_plugin("faulty-dist", "faulty", source)
    with pytest.raises(RegbenchError, match=rf"Regularizer 'faulty' from faulty-dist breaks the "
                                            rf"plugin contract: .*{problem}"):
        plugins.get_regularizer("faulty")
    with pytest.warns(UserWarning, match="faulty-dist"):
        listed = plugins.loadable()
    assert "faulty" not in listed and {"good", "vanilla", "lnsr"} <= set(listed)


def test_the_listing_survives_a_faulty_plugin(tmp_path):
    """`regbench regularizers` in a fresh interpreter, with a plugin whose search space is a
    tuple on the path: the others are listed, the faulty one reported."""
    (tmp_path / "broken_plugin.py").write_text(GOOD.format(name="broken").replace(
        'return {"alpha": FloatDistribution(0.1, 10.0, log=True)}',
        'return ({"alpha": FloatDistribution(0.1, 10.0, log=True)},)'))
    info = tmp_path / "broken_dist-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-dist\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{plugins.GROUP}]\nbroken = broken_plugin:Plugin\n")
    result = subprocess.run([sys.executable, "-m", "regbench.cli", "regularizers"],
                            capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "broken-dist breaks the plugin contract" in result.stderr
    assert "Traceback" not in result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines()[2:] if line.strip()}
    assert "broken" not in listed and {"vanilla", "lnsr", "smart"} <= listed


def test_costs_are_declared_per_step_and_once():
    lnsr = plugins.build("lnsr")
    assert lnsr.extra_passes() > 0 and lnsr.setup_passes() == 0
    assert math.isclose(plugins.build("vanilla").extra_passes(), 0.0)


CHEAP = GOOD + """
    def step_cost(self):
        return 0.31  # most layers frozen: no backward pass through them
"""
FISHER = GOOD + """
    def setup_passes(self):
        return 1.0

    def setup_example_passes(self):
        return 2.0
"""


def test_the_estimate_prices_declared_step_costs_and_passes_of_single_examples(install_plugin,
                                                                             monkeypatch):
    from regbench import runner

    install_plugin("cheap-dist", "cheap", CHEAP.format(name="cheap"))
    install_plugin("fisher-dist", "fisher", FISHER.format(name="fisher"))
    plan = Plan.of(parse_suite({"name": "costs", "tasks": ["rte"], "sizes": [16],
                                "regularizers": ["vanilla", "cheap", "fisher"],
                                "recipe": {"batch_size": 8, "epochs": 0, "min_steps": 40}}))
    timed = []

    def task_costs(suite, device, data_dir):  # 0.5 s a step at batch size 8, 0.1 s at 1
        timed.append(suite.recipe.batch_size)
        return {"rte": (0.5 if suite.recipe.batch_size == 8 else 0.1, 3.0)}

    monkeypatch.setattr(runner, "task_costs", task_costs)
    seconds = runner.estimate_seconds(plan, "cpu")
    assert timed == [8, 1]  # a plugin passes single examples: their time is measured
    assert seconds[Cell("vanilla", "rte", 16)] == pytest.approx(3.0 + 40 * 0.5)
    assert seconds[Cell("cheap", "rte", 16)] == pytest.approx(3.0 + 40 * 0.5 * 0.31)
    # One batched epoch (2 batches of 8) and two passes of each of the 16 examples at setup.
    assert seconds[Cell("fisher", "rte", 16)] == pytest.approx(
        3.0 + 40 * 0.5 + 2 * 0.5 + 2 * 16 * 0.1)
