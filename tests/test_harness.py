
import dataclasses

import pytest
import torch

from regbench import harness, modeling
from regbench.features import task_data
from regbench.harness import fine_tune, mixed_precision, prepare
from regbench.modeling import load_model
from regbench.plugin import Regularizer
from regbench.recipe import Recipe
from regbench.registry.vanilla import Vanilla
from regbench.tasks import get_task


def test_same_seed_same_metrics_on_cpu(stsb_data, tiny_recipe):
    # STS-B's correlations are continuous: any difference in the weights would show. The first
    # run reads the checkpoint from disk, the second copies it: that must not change a thing.
    modeling._pretrained.cache_clear()
    first = fine_tune(stsb_data, Vanilla(), seed=3, recipe=tiny_recipe, progress=False)
    second = fine_tune(stsb_data, Vanilla(), seed=3, recipe=tiny_recipe, progress=False)
    other = fine_tune(stsb_data, Vanilla(), seed=4, recipe=tiny_recipe, progress=False)
    assert first.status == "finished" and first.steps == 4  # 32 examples, batches of 8
    assert first.validation == second.validation and first.test == second.test
    assert first.noise_stability == second.noise_stability
    assert first.test != other.test


def test_classification_metrics(rte_data, tiny_recipe):
    result = fine_tune(rte_data, Vanilla(), seed=3, recipe=tiny_recipe, progress=False)
    assert set(result.test) == {"accuracy"} and 0 <= result.test["accuracy"] <= 1


def test_tuning_runs_leave_the_test_half_alone(rte_data, tiny_recipe):
    result = fine_tune(rte_data, Vanilla(), seed=3, recipe=tiny_recipe, progress=False,
                       test=False)
    assert result.validation and result.test == {}


def test_head_depends_on_the_seed_alone():
    rte = get_task("rte")
    a, head = load_model("minilm", rte, seed=5)
    torch.manual_seed(999)  # global randomness must not leak into the head
    b, _ = load_model("minilm", rte, seed=5)
    c, _ = load_model("minilm", rte, seed=6)
    assert head == {"classifier.weight", "classifier.bias"}
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)
    assert torch.equal(a.bert.encoder.layer[0].output.dense.weight,
                       c.bert.encoder.layer[0].output.dense.weight)


class Exploding(Regularizer):
    name = "exploding"

    def loss(self, model, batch, outputs, task_loss):
        return task_loss * float("nan")


def test_non_finite_loss_ends_the_run_as_diverged(rte_data, tiny_recipe):
    result = fine_tune(rte_data, Exploding(), seed=1, recipe=tiny_recipe, progress=False)
    assert result.status == "diverged"
    assert "nan" in result.error and "step 1" in result.error
    assert result.test == {}


def test_evaluations_feed_the_callback(rte_data):
    recipe = Recipe(epochs=2, min_steps=0, batch_size=8, max_length=64, evaluations=4)
    seen = []
    result = fine_tune(rte_data, Vanilla(), seed=1, recipe=recipe, progress=False,
                       on_evaluate=lambda step, score: seen.append((step, score)))
    assert [step for step, _ in seen] == [2, 4, 6, 8]
    assert seen == result.history and seen[-1][1] == result.validation["accuracy"]


def test_min_steps_extends_small_runs():
    recipe = Recipe(epochs=3, min_steps=300, batch_size=16)
    assert recipe.total_steps(100) == 300 and recipe.total_steps(3200) == 600


def test_unknown_recipe_key_is_named():
    with pytest.raises(Exception, match="learning_rat.*the recipe has"):
        Recipe.from_dict({"learning_rat": 1e-5})


def test_precision_decides_the_autocast(stsb_data, tiny_recipe):
    cpu = torch.device("cpu")
    assert mixed_precision("bf16", cpu) and not mixed_precision("fp32", cpu)
    runs = {p: fine_tune(stsb_data, Vanilla(), seed=1, device=cpu, progress=False,
                         recipe=dataclasses.replace(tiny_recipe, precision=p))
            for p in ("fp32", "bf16")}
    assert runs["fp32"].status == runs["bf16"].status == "finished"
    # bf16 rounds every matmul: the same run ends with other predictions, so other correlations
    assert runs["fp32"].validation != runs["bf16"].validation


def test_the_cpu_attention_kernel_changes_bits_not_results(stsb_data, tiny_recipe, monkeypatch):
    """On a CPU the harness computes attention as plain products and a softmax, not with SDPA
    (quicker at short lengths): the same run with either kernel ends within rounding. Tolerance:
    0.01 of a correlation, a tenth of the spread between glue-cpu's vanilla seeds on STS-B."""
    cpu = torch.device("cpu")
    state = prepare(stsb_data, Vanilla(), seed=3, recipe=tiny_recipe, device=cpu)
    assert state.model.config._attn_implementation == "eager"
    eager = fine_tune(stsb_data, Vanilla(), seed=3, recipe=tiny_recipe, device=cpu,
                      progress=False)
    monkeypatch.setattr(harness, "set_attention", lambda network, device: None)  # the default
    sdpa = fine_tune(stsb_data, Vanilla(), seed=3, recipe=tiny_recipe, device=cpu,
                     progress=False)
    assert eager.test != sdpa.test  # two kernels: the bits differ
    for split in ("validation", "test"):
        for metric, value in getattr(eager, split).items():
            assert getattr(sdpa, split)[metric] == pytest.approx(value, abs=0.01), (split, metric)
    assert sdpa.noise_stability["summary"] == pytest.approx(eager.noise_stability["summary"],
                                                            rel=0.02)


def test_a_validation_sample_is_stratified_fixed_and_scored_in_place_of_the_half(glue_dir):
    data = task_data(get_task("rte"), 32, 0, "minilm", 64, glue_dir)
    sample = data.validation_sample(40)
    assert len(sample) == 40 and data.validation_sample(0) is data.validation
    assert data.validation_sample(10_000) is data.validation
    # Stratified: the labels' shares of the half, to one example.
    share = data.validation.labels.mean()
    assert abs(sample.labels.sum() - 40 * share) <= 1
    again = data.validation_sample(40)
    assert again.input_ids == sample.input_ids  # the same for every run
    assert all(ids in data.validation.input_ids for ids in sample.input_ids)
    recipe = Recipe(epochs=1, min_steps=0, batch_size=16, max_length=64, evaluations=1,
                    validation_size=40)
    seen = []
    result = fine_tune(dataclasses.replace(data, test=data.test.take(range(16))), Vanilla(),
                       seed=1, recipe=recipe, progress=False, test=False,
                       on_evaluate=lambda step, score: seen.append(score))
    # Accuracy over 40 examples moves in steps of 1/40.
    assert len(seen) == 1 and (seen[0] * 40) == pytest.approx(round(seen[0] * 40))
    assert result.validation["accuracy"] == seen[0]


def test_a_run_records_the_time_of_each_step(rte_data, tiny_recipe):
    result = fine_tune(rte_data, Vanilla(), 1, recipe=tiny_recipe,
                       device=torch.device("cpu"), progress=False)
    assert len(result.step_seconds) == result.steps > 1
    assert 0 < sum(result.step_seconds) < result.seconds
