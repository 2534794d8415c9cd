import pytest

from regbench.errors import RegbenchError
from regbench.runner import Plan
from regbench.suite import builtin_suites, load_suite, override, parse_suite

BUILT_INS = ["vanilla", "weight_decay", "l2sp", "mixout", "smart", "lnsr", "rdrop", "reinit",
             "noisytune", "llrd", "childtuning_d", "recadam", "ema", "r3f", "sam", "freelb",
             "hype", "bss"]


def test_builtin_suites_follow_the_protocol():
    assert {"quickstart", "glue-small"} <= set(builtin_suites())
    full = load_suite("glue-small")
    assert full.tasks == ("rte", "mrpc", "cola", "stsb") and full.sizes == (100, 300, 1000)
    assert len(full.final_seeds) >= 5 and list(full.regularizers) == BUILT_INS
    assert not set(full.final_seeds) & set(full.tuning_seeds)
    cpu = load_suite("glue-cpu")  # issue 21: two tasks that learn, ten paired seeds, every built-in
    assert {"sst2", "stsb"} <= set(cpu.tasks) and len(cpu.sizes) >= 2 and max(cpu.sizes) >= 300
    assert list(cpu.regularizers) == BUILT_INS and len(cpu.tuning_seeds) >= 2
    assert len(cpu.final_seeds) >= 10 and not set(cpu.final_seeds) & set(cpu.tuning_seeds)
    # Below 20 trials a study is random search: its start-up is the whole budget.
    assert 2 <= cpu.tuning.trials < 20 and cpu.tuning.sampler()["sampler"] == "qmc"
    quick = load_suite("quickstart")
    assert set(quick.regularizers) <= set(BUILT_INS) and len(quick.final_seeds) >= 5
    assert len(quick.sizes) >= 2


def test_user_yaml_by_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("tasks: [STS-B]\nsizes: [50]\nregularizers:\n  lnsr: {inject_layer: 2}\n"
                    "recipe: {epochs: 1}\ntuning: {trials: 3, pruner: none}\n")
    suite = load_suite(str(path))
    assert suite.name == "mine" and suite.tasks == ("stsb",)
    assert suite.regularizers == {"lnsr": {"inject_layer": 2}}
    assert suite.recipe.epochs == 1 and suite.tuning.trials == 3


@pytest.mark.parametrize("text, message", [
    ("tasks: [rte]\nsizes: [10]\nregularizers: [vanilla]\nseeds: [1]\n",
     r"key 'seeds' is not a suite key; the keys are: .*final_seeds"),
    ("tasks: [rte]\nregularizers: [vanilla]\n", r"key 'sizes' is required"),
    ("tasks: [rte]\nsizes: [ten]\nregularizers: [vanilla]\n",
     r"sizes\[0\] = 'ten' is not allowed; it must be an integer"),
    ("tasks: [rtx]\nsizes: [10]\nregularizers: [vanilla]\n", r"Unknown task 'rtx'.*'rte'"),
    ("tasks: [rte]\nsizes: [10]\nregularizers: [l2-sp]\n", r"Unknown regularizer 'l2-sp'.*'l2sp'"),
    ("tasks: [rte]\nsizes: [10]\nregularizers: {l2sp: {gamma: 1}}\n", r"no parameter gamma.*alpha"),
    ("tasks: [rte]\nsizes: [10]\nregularizers: [vanilla]\ntuning: {pruner: asha}\n",
     r"pruner = 'asha' is not allowed; it must be one of 'none', 'median', 'hyperband'"),
    ("tasks: [rte]\nsizes: [10]\nregularizers: [vanilla]\nrecipe: {lr: 1}\n",
     r"Unknown recipe key\(s\) lr"),
    ("tasks: [rte\n", r"is not valid YAML"),
    ("tasks: [rte]\nsizes: [10]\nregularizers: [vanilla]\nfinal_seeds: [1, 2]\n"
     "tuning_seeds: [2, 3]\n", r"seeds \[2\] are both tuning and final seeds"),
    ("- rte\n", r"must be a mapping"),
    ("tasks: [rte]\nsizes: [10]\nregularizers: [vanilla]\ntuning: {trials: -1}\n",
     r"tuning trials = -1 is not allowed; it must be an integer ≥ 0"),
    ("tasks: [rte]\nsizes: [10]\nregularizers: [vanilla]\nrecipe: {precision: fp16}\n",
     r"precision = 'fp16' is not allowed; it must be one of 'auto', 'bf16', 'fp32'"),
])
def test_bad_suites_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RegbenchError, match=message):
        Plan.of(load_suite(str(path)))  # the plan checks options against the model's depth


def test_unknown_suite_suggests_a_builtin():
    with pytest.raises(RegbenchError, match=r"Unknown suite 'quickstar'.*'quickstart'"):
        load_suite("quickstar")


def test_flags_override_the_suite():
    suite = parse_suite({"name": "s", "tasks": ["rte"], "sizes": [10],
                         "regularizers": {"vanilla": {}, "lnsr": {"samples": 2}}})
    changed = override(suite, tasks=["cola", "sts-b"], sizes=[5], final_seeds=[7],
                       regularizers=["lnsr"], trials=3, model=None)
    assert changed.tasks == ("cola", "stsb") and changed.sizes == (5,)
    assert changed.final_seeds == (7,) and changed.tuning.trials == 3
    assert changed.regularizers == {"lnsr": {"samples": 2}} and changed.model == suite.model
    with pytest.raises(RegbenchError, match="Unknown regularizer"):
        override(suite, regularizers=["nope"])
