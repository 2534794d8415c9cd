"""Plugin discovery as a third party meets it: the built-ins, an installed example plugin (R-Drop,
examples/regbench-rdrop) checked against its definition, and what a broken or clashing
distribution looks like to the user."""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from optuna.distributions import FloatDistribution

from regbench import plugins
from regbench.data import GLUE_DIR_ENV
from regbench.errors import RegbenchError
from regbench.harness import set_up
from regbench.modeling import load_model
from regbench.tasks import get_task

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "regbench-rdrop"
BUILT_INS = {"vanilla", "weight_decay", "l2sp", "mixout", "smart", "lnsr"}


def _python(*args: str, path: tuple[Path, ...] = (), **env: str) -> subprocess.CompletedProcess:
    """Run `python *args` in a fresh interpreter, with `path` on its PYTHONPATH."""
    pythonpath = [*map(str, path), *filter(None, [os.environ.get("PYTHONPATH")])]
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env={**os.environ, **env, "PYTHONPATH": os.pathsep.join(pythonpath)})


@pytest.fixture(scope="session")
def rdrop_site(tmp_path_factory) -> Path:
    """The example plugin, installed by pip into a folder of its own: nothing global changes."""
    work = tmp_path_factory.mktemp("rdrop")
    # A build writes into its source tree: build a copy, not the repository.
    source = shutil.copytree(EXAMPLE, work / "source",
                             ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = work / "site"
    # pip's default, isolated build: a fresh venv's setuptools is too old to build a wheel by
    # itself (3.11) or missing (3.12+), so --no-build-isolation would fail there.
    result = _python("-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                     str(source))
    assert result.returncode == 0, result.stderr
    return site


@pytest.fixture
def rdrop(rdrop_site, installed):
    """The installed example's module, found the way regbench finds it."""
    installed(rdrop_site)
    return sys.modules[plugins.get_regularizer("rdrop").__module__]


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


def test_an_installed_plugin_is_listed_with_its_distribution(rdrop, rdrop_site):
    assert "rdrop" in plugins.names()
    assert plugins.distribution_of("rdrop") == "regbench-rdrop 0.1.0"
    assert Path(inspect.getfile(rdrop)).parent == rdrop_site  # the installed copy, not the source
    regularizer = plugins.build("rdrop", {"alpha": 0.5})
    assert regularizer.params == {"alpha": 0.5}
    assert regularizer.extra_passes() == 1
    assert rdrop.RDrop.search_space(6) == {"alpha": FloatDistribution(0.1, 10.0, log=True)}


def test_an_installed_plugin_trains_from_the_command_line(rdrop_site, glue_dir):
    result = _python("-m", "regbench.cli", "train", "--task", "rte", "--n-train", "16",
                     "--epochs", "1", "--min-steps", "0", "--max-length", "32",
                     "--regularizer", "rdrop", "--param", "alpha=0.5", "--json",
                     path=(rdrop_site,), **{GLUE_DIR_ENV: str(glue_dir)})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["regularizer"], report["params"]) == ("rdrop", {"alpha": 0.5})
    assert (report["status"], report["steps"], report["n_train"]) == ("finished", 1, 16)
    assert 0 <= report["test"]["accuracy"] <= 1


def _symmetric_kl_by_hand(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """½ (KL(P‖Q) + KL(Q‖P)) from torch's own KL, for P and Q the softmax of `a` and `b`."""
    log_p, log_q = a.log_softmax(-1), b.log_softmax(-1)
    kl_pq = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    kl_qp = F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)
    return (kl_pq + kl_qp) / 2


def test_symmetric_kl_is_zero_for_identical_logits_and_matches_a_hand_computation(rdrop):
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    torch.testing.assert_close(rdrop.symmetric_kl(a, a), torch.zeros(5))
    torch.testing.assert_close(rdrop.symmetric_kl(a, a + 2.0), torch.zeros(5))  # same softmax
    # P = (1/4, 3/4), Q = (1/2, 1/2): ½ (¼·ln 2 + ¼·ln(3/2)) = ln(3)/8
    value = rdrop.symmetric_kl(torch.tensor([[0.0, math.log(3.0)]]), torch.zeros(1, 2))
    assert value.item() == pytest.approx(math.log(3.0) / 8, rel=1e-6)
    torch.testing.assert_close(rdrop.symmetric_kl(a, b), _symmetric_kl_by_hand(a, b))


def test_without_dropout_the_loss_is_the_task_loss(rdrop, minilm, rte_batch):
    model, head = minilm
    model.eval()
    regularizer = rdrop.RDrop(alpha=5.0)
    set_up(regularizer, model, get_task("rte"), head)
    outputs = model(**rte_batch)
    torch.testing.assert_close(regularizer.loss(model, rte_batch, outputs, outputs.loss),
                               outputs.loss)


@pytest.mark.parametrize("task_name", ["rte", "stsb"])
def test_with_dropout_the_loss_follows_the_definition(rdrop, task_name, request):
    task = get_task(task_name)
    model, head = load_model("minilm", task, seed=0)
    model.train()
    batch = request.getfixturevalue(f"{task_name}_data").train.collate(list(range(4)), pad_id=0)
    regularizer = rdrop.RDrop(alpha=0.5)
    set_up(regularizer, model, task, head)
    outputs = model(**batch)
    rng = torch.get_rng_state()
    loss = regularizer.loss(model, batch, outputs, outputs.loss)
    torch.set_rng_state(rng)  # the plugin's second pass again: the same dropout masks
    second = model(**batch)

    a, b = outputs.logits, second.logits
    assert not torch.allclose(a, b)  # another dropout mask
    gap = (a - b).square().mean() if task.is_regression else _symmetric_kl_by_hand(a, b).mean()
    assert gap > 0
    expected = (outputs.loss + second.loss) / 2 + 0.5 * gap
    torch.testing.assert_close(loss, expected)
    # Gradients flow through both passes, as through the expression above.
    weight = model.classifier.weight
    (grad,) = torch.autograd.grad(loss, weight, retain_graph=True)
    torch.testing.assert_close(grad, torch.autograd.grad(expected, weight)[0])


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
