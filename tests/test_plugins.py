"""Plugin discovery as a third party meets it: the built-ins, the installed example plugins (SWA,
examples/regbench-swa, checked against its definition; ASAM, examples/regbench-asam, an
optimizer-level method), a plugin of the first version of the contract, and what a broken or
clashing distribution looks like to the user."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from optuna.distributions import FloatDistribution

from regbench import plugins
from regbench.data import GLUE_DIR_ENV
from regbench.errors import RegbenchError
from regbench.harness import evaluate, fine_tune, set_up
from regbench.modeling import load_tokenizer
from regbench.recipe import Recipe
from regbench.tasks import get_task

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "regbench-swa"
ASAM_EXAMPLE = EXAMPLE.parent / "regbench-asam"  # the optimizer-level example
BUILT_INS = {"vanilla", "weight_decay", "l2sp", "mixout", "smart", "lnsr", "childtuning_d",
             "recadam", "ema", "sam", "freelb", "hype", "bss"}


def _python(*args: str, path: tuple[Path, ...] = (), cwd: Path | None = None,
            **env: str) -> subprocess.CompletedProcess:
    """Run `python *args` in a fresh interpreter, with `path` on its PYTHONPATH."""
    pythonpath = [*map(str, path), *filter(None, [os.environ.get("PYTHONPATH")])]
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **env, "PYTHONPATH": os.pathsep.join(pythonpath)})


def _installed(example: Path, work: Path) -> Path:
    """An example plugin, installed by pip into a folder of its own (`site`, beside the copy of
    its source it was built from, `source`): nothing global changes."""
    # A build writes into its source tree: build a copy, not the repository.
    source = shutil.copytree(example, work / "source",
                             ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = work / "site"
    # pip's default, isolated build: a fresh venv's setuptools is too old to build a wheel by
    # itself (3.11) or missing (3.12+), so --no-build-isolation would fail there.
    result = _python("-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                     str(source))
    assert result.returncode == 0, result.stderr
    return site


@pytest.fixture(scope="session")
def swa_site(tmp_path_factory) -> Path:
    return _installed(EXAMPLE, tmp_path_factory.mktemp("swa"))


@pytest.fixture(scope="session")
def asam_site(tmp_path_factory) -> Path:
    return _installed(ASAM_EXAMPLE, tmp_path_factory.mktemp("asam"))


@pytest.fixture
def swa(swa_site, installed):
    """The installed example's module, found the way regbench finds it."""
    installed(swa_site)
    return sys.modules[plugins.get_regularizer("swa").__module__]


def test_the_built_ins_are_found_by_name_with_their_distribution():
    assert BUILT_INS <= set(plugins.names())
    assert {plugins.distribution_of(name).split()[0] for name in BUILT_INS} == {"regbench"}
    assert {name: plugins.get_regularizer(name).name for name in BUILT_INS} == {
        name: name for name in BUILT_INS}


def test_listing_imports_no_plugin_and_asking_imports_only_that_one():
    probe = textwrap.dedent("""
        import json, sys
        from importlib.metadata import entry_points
        from regbench import plugins

        def imported():
            return [e.module for e in entry_points(group=plugins.GROUP) if e.module in sys.modules]

        plugins.names()
        listed = imported()
        plugins.build("vanilla")
        print(json.dumps([listed, imported()]))
    """)
    result = _python("-c", probe)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [[], ["regbench.registry.vanilla"]]


def test_an_unknown_name_suggests_the_closest_known_names():
    with pytest.raises(RegbenchError, match=r"Unknown regularizer 'weightdecay'\. "
                                            r"Did you mean 'weight_decay'\? Known: .*l2sp"):
        plugins.build("weightdecay")


def test_an_installed_plugin_is_listed_with_its_distribution(swa, swa_site):
    assert "swa" in plugins.names()
    assert plugins.distribution_of("swa") == "regbench-swa 0.1.0"
    assert Path(inspect.getfile(swa)).parent == swa_site  # the installed copy, not the source
    regularizer = plugins.build("swa", {"swa_start": 0.5, "c": 2})
    assert regularizer.params == {"swa_start": 0.5, "swa_lr": 0.5, "lr_schedule": "constant",
                                  "c": 2}
    assert (regularizer.extra_passes(), regularizer.setup_passes()) == (0, 0)
    assert swa.SWA.search_space(6) == {"swa_start": FloatDistribution(0.5, 0.9),
                                       "swa_lr": FloatDistribution(0.1, 1.0, log=True)}
    with pytest.raises(RegbenchError, match=r"'swa': lr_schedule = 'linear' is not allowed; it "
                                            r"must be one of 'constant', 'cyclic'"):
        plugins.build("swa", {"lr_schedule": "linear"})


def test_swa_refuses_a_model_whose_batchnorm_statistics_it_would_not_recompute(swa):
    with pytest.raises(RegbenchError, match="swa does not recompute BatchNorm statistics"):
        set_up(swa.SWA(), torch.nn.Sequential(torch.nn.BatchNorm1d(4)), get_task("rte"))


def test_an_installed_plugin_trains_from_the_command_line(swa_site, glue_dir):
    result = _python("-m", "regbench.cli", "train", "--task", "rte", "--n-train", "16",
                     "--epochs", "1", "--min-steps", "0", "--max-length", "32",
                     "--regularizer", "swa", "--param", "swa_start=0.5", "--json",
                     path=(swa_site,), **{GLUE_DIR_ENV: str(glue_dir)})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["regularizer"], report["params"]["swa_start"]) == ("swa", 0.5)
    assert (report["status"], report["steps"], report["n_train"]) == ("finished", 1, 16)
    assert 0 <= report["test"]["accuracy"] <= 1


def test_the_examples_own_tests_pass_against_the_installed_plugin(swa_site):
    result = _python("-m", "pytest", "-q", "-p", "no:cacheprovider", "test_regbench_swa.py",
                     path=(swa_site,), cwd=swa_site.parent / "source")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_the_optimizer_level_examples_own_tests_pass_against_the_installed_plugin(asam_site):
    # They build `asam` by name, through the installed distribution's entry point, and train
    # it beside the built-in `sam`; the command line's path is the SWA example's, tested above.
    result = _python("-m", "pytest", "-q", "-p", "no:cacheprovider", "test_regbench_asam.py",
                     path=(asam_site,), cwd=asam_site.parent / "source")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_swa_trains_at_its_rate_and_tests_the_mean_of_the_weights_from_swa_start(swa,
                                                                               rte_data):
    # 32 examples in batches of 8, two epochs: 8 steps; SWA from step 4, a weight every 2 steps.
    recipe = Recipe(epochs=2, min_steps=0, batch_size=8, max_length=64, evaluations=1,
                    learning_rate=1e-3, warmup_ratio=0.0)

    class Recording(swa.SWA):
        """Records the rate of every step, and a running sum of the weights after steps 4, 6
        and 8, in float64."""

        def after_step(self, model):
            super().after_step(model)
            self.rates.append(self.state.lrs[0])
            if self.state.step in (4, 6, 8):
                for n, p in model.named_parameters():
                    self.total[n] = self.total.get(n, 0) + p.detach().double()

    plugin = Recording(swa_start=0.5, swa_lr=0.25, c=2)
    plugin.rates, plugin.total = [], {}
    result = fine_tune(rte_data, plugin, seed=0, recipe=recipe, progress=False)
    # The recipe's linear decay for 4 steps, then a quarter of the peak rate.
    assert plugin.rates == pytest.approx([1e-3 * (8 - s) / 8 for s in range(4)] + [2.5e-4] * 4)

    model = plugin.state.model
    last = {n: p.detach().clone() for n, p in model.named_parameters()}
    plugin.before_evaluate(plugin.state)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach().double(), plugin.total[n] / 3, rtol=1e-6,
                                   atol=1e-8)
    pad, state = load_tokenizer("minilm").pad_token_id, plugin.state
    assert result.test == evaluate(model, rte_data.test, rte_data.task, pad, 64, state.device,
                                   state.bf16)
    plugin.after_evaluate(plugin.state)
    assert all(torch.equal(p, last[n]) for n, p in model.named_parameters())


FIRST_VERSION = """
from optuna.distributions import FloatDistribution
from regbench.plugin import Context, Regularizer


class Plugin(Regularizer):
    name = "first"
    description = "Two dropout passes per batch; their outputs are pulled together."
    citation = "Liang et al., NeurIPS 2021, R-Drop: Regularized Dropout for Neural Networks"
    defaults = {"alpha": 1.0}

    @classmethod
    def search_space(cls, num_layers):
        return {"alpha": FloatDistribution(0.1, 10.0, log=True)}

    def extra_passes(self):
        return 1.0

    def setup(self, model, context: Context):
        self.regression = context.task.is_regression
        self.calls = 0

    def loss(self, model, batch, outputs, task_loss):
        self.calls += 1
        second = model(**batch)
        gap = (outputs.logits.float() - second.logits.float()).square().mean()
        return (task_loss + second.loss) / 2 + self.params["alpha"] * gap
"""


def test_a_plugin_of_the_first_contract_still_trains_end_to_end(install_plugin, rte_data,
                                                                tiny_recipe):
    """The shape of the first example plugin: a defaults dict, a search space, `setup(model,
    context)` reading the task, and a `loss` hook, imported with the first names."""
    install_plugin("regbench-first", "first", FIRST_VERSION)
    plugin = plugins.build("first", {"alpha": 2})
    assert plugin.params == {"alpha": 2.0}
    with pytest.raises(RegbenchError, match=r"alpha = 20\.0 is not allowed; it must be a number "
                                            r"≥ 0\.1 and ≤ 10"):
        plugins.build("first", {"alpha": 20.0})
    result = fine_tune(rte_data, plugin, seed=0, recipe=tiny_recipe, progress=False)
    assert (result.status, result.steps, plugin.calls, plugin.regression) == (
        "finished", 4, 4, False)
    assert 0 <= result.test["accuracy"] <= 1


def test_a_plugin_that_fails_to_import_is_reported_and_spares_the_others(tmp_path, installed,
                                                                         dist_info):
    site = dist_info(tmp_path, "regbench-broken", {"broken": "regbench_broken:Broken"})
    (site / "regbench_broken.py").write_text("import a_dependency_that_is_not_installed\n")
    installed(site)
    assert "broken" in plugins.names()  # listing imports nothing, so it cannot fail
    with pytest.warns(UserWarning, match=r"'broken' from regbench-broken failed to import "
                                         r"\(ModuleNotFoundError"):
        loaded = plugins.loadable()
    assert set(loaded) == set(plugins.names()) - {"broken"}
    assert plugins.build("l2sp").name == "l2sp"
    with pytest.raises(RegbenchError, match=r"regbench-broken .*No module named "
                                            r"'a_dependency_that_is_not_installed'"):
        plugins.build("broken")


def test_two_distributions_claiming_one_name_is_an_error_naming_both(tmp_path, installed,
                                                                     dist_info):
    installed(dist_info(tmp_path, "regbench-extras", {"l2sp": "regbench_extras:L2SP"}))
    with pytest.raises(RegbenchError, match="several distributions") as error:
        plugins.build("l2sp")
    claimants = re.search(r"distributions: (\S+) and (\S+)\.", str(error.value))
    assert claimants is not None and set(claimants.groups()) == {"regbench", "regbench-extras"}
    assert plugins.build("vanilla").name == "vanilla"  # the other names are unaffected
