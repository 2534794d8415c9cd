"""Shared fixtures: the real GLUE files of ../shared/glue, the embedded MiniLM, tiny slices."""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch
from transformers import BertConfig, BertForSequenceClassification

from regbench import plugins
from regbench.features import CACHE_ENV, TaskData, task_data
from regbench.modeling import load_model
from regbench.recipe import Recipe
from regbench.tasks import get_task


@pytest.fixture(scope="session", autouse=True)
def feature_cache(tmp_path_factory) -> Path:
    """One feature cache for the session, away from the user's own."""
    path = tmp_path_factory.mktemp("cache")
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(path)
    yield path
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous


@pytest.fixture(scope="session")
def tiny_recipe() -> Recipe:
    """One short epoch over short sequences: seconds on a CPU."""
    return Recipe(epochs=1, min_steps=0, batch_size=8, max_length=64, evaluations=1)


def _short_dev(data: TaskData, n: int = 32) -> TaskData:
    """`data` with `n` examples per dev half: whole halves would dominate a short run's time."""

    return dataclasses.replace(data, validation=data.validation.take(range(n)),
                               test=data.test.take(range(n)))


@pytest.fixture(scope="session")
def rte_data(glue_dir, tiny_recipe):
    """32 RTE training examples; 32 examples in each dev half."""
    return _short_dev(task_data(get_task("rte"), 32, 0, "minilm", tiny_recipe.max_length,
                                glue_dir))


@pytest.fixture(scope="session")
def stsb_data(glue_dir, tiny_recipe):
    return _short_dev(task_data(get_task("stsb"), 32, 0, "minilm", tiny_recipe.max_length,
                                glue_dir))


@pytest.fixture
def minilm():
    """A fresh MiniLM with an RTE head, and the names of its head parameters."""
    return load_model("minilm", get_task("rte"), seed=0)


@pytest.fixture
def rte_batch(rte_data):
    """Eight real RTE examples, padded as the harness pads them."""
    return rte_data.train.collate(list(range(8)), pad_id=0)


@pytest.fixture
def tiny_bert():
    """A two-layer BERT of width 8 with a fresh two-class head and no dropout, and the names of
    its head parameters: deterministic steps in milliseconds."""
    # Weights drawn wider than BERT's 0.02, so that gradients are of a trained model's order.
    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16, num_labels=2,
                        initializer_range=0.5, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return (BertForSequenceClassification(config).train(),
            frozenset({"classifier.weight", "classifier.bias"}))


@pytest.fixture
def tiny_batches():
    """Three batches of four random sequences of length 6 for `tiny_bert`, the last token of the
    second sequence padding."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(3):
        mask = torch.ones(4, 6, dtype=torch.long)
        mask[1, -1] = 0
        batches.append({"input_ids": torch.randint(1, 30, (4, 6), generator=generator) * mask,
                        "attention_mask": mask,
                        "labels": torch.randint(0, 2, (4,), generator=generator)})
    return batches


@pytest.fixture
def watcher():
    """`watcher(url)`: an engine that reads the database workers write, and never creates it. A
    SQLite file that a watcher made, empty, before the workers made their store would be refused
    as not a store."""
    engines = []

    def watch(url: str) -> sa.Engine:
        if url.startswith("sqlite:///"):
            url = f"sqlite:///file:{url.removeprefix('sqlite:///')}?mode=ro&uri=true"
        engines.append(sa.create_engine(url))
        return engines[-1]

    yield watch
    for engine in engines:
        engine.dispose()


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def _forget_discovery() -> None:
    plugins._discover.cache_clear()
    plugins.get_regularizer.cache_clear()


@pytest.fixture
def installed(monkeypatch):
    """`installed(folder, ...)` makes the distributions in those folders visible to this test:
    importlib.metadata finds them on sys.path. Discovery's caches are dropped on both sides."""

    def install(*folders: Path) -> None:
        for folder in folders:
            monkeypatch.syspath_prepend(folder)
        _forget_discovery()

    yield install
    _forget_discovery()  # before monkeypatch restores sys.path; the next lookup sees the old one


def _dist_info(site: Path, name: str, entry_points: dict[str, str]) -> Path:
    """A distribution as an installer leaves it, with no build: `<name>.dist-info` in `site`."""
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{plugins.GROUP}]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    return site


@pytest.fixture
def dist_info():
    return _dist_info


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """Install a regularizer the way a third-party package does: a module and a dist-info with
    its entry point, found on sys.path. Returns a function (distribution, name, source)."""
    from regbench import plugins

    monkeypatch.syspath_prepend(str(tmp_path))

    def install(distribution: str, name: str, source: str) -> None:
        module = f"{distribution.replace('-', '_')}_{name}"
        (tmp_path / f"{module}.py").write_text(source)
        sys.modules.pop(module, None)  # an earlier test's module of the same name
        importlib.invalidate_caches()
        info = tmp_path / f"{distribution.replace('-', '_')}-0.1.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\n"
                                       "Version: 0.1\n")
        with open(info / "entry_points.txt", "a") as f:
            f.write(f"[regbench.regularizers]\n{name} = {module}:Plugin\n")
        plugins._discover.cache_clear()
        plugins.get_regularizer.cache_clear()

    yield install
    plugins._discover.cache_clear()
    plugins.get_regularizer.cache_clear()

