import subprocess
import sys

import numpy as np
import pytest

from regbench.data import load_raw
from regbench.splits import split_dev, strata, subsample
from regbench.tasks import get_task


@pytest.fixture(scope="module")
def rte_labels(glue_dir):
    raw = load_raw(get_task("rte"), glue_dir)
    return np.asarray(raw["train"]["label"]), np.asarray(raw["dev"]["label"])


def test_subsample_is_stratified_and_seeded(rte_labels):
    train, _ = rte_labels
    chosen = subsample(get_task("rte"), train, 100, data_seed=3)
    assert len(chosen) == len(set(chosen)) == 100
    assert abs(train[chosen].mean() - train.mean()) <= 0.01
    assert np.array_equal(chosen, subsample(get_task("rte"), train, 100, data_seed=3))
    assert not np.array_equal(chosen, subsample(get_task("rte"), train, 100, data_seed=4))


def test_subsample_larger_than_the_set_is_the_set(rte_labels):
    train, _ = rte_labels
    assert np.array_equal(subsample(get_task("rte"), train, 10**6, 0), np.arange(len(train)))


def test_dev_halves_are_disjoint_stratified_and_complete(rte_labels):
    _, dev = rte_labels
    validation, test = split_dev(get_task("rte"), dev)
    assert not set(validation) & set(test)
    assert sorted([*validation, *test]) == list(range(len(dev)))
    assert abs(len(validation) - len(test)) <= 1
    assert abs(dev[validation].mean() - dev[test].mean()) < 0.01


def test_stsb_is_stratified_by_score_bins(glue_dir):
    scores = np.asarray(load_raw(get_task("stsb"), glue_dir)["dev"]["label"])
    validation, test = split_dev(get_task("stsb"), scores)
    bins = strata(get_task("stsb"), scores)
    assert set(bins) == {0, 1, 2, 3, 4}
    for b in range(5):
        assert abs((bins[validation] == b).sum() - (bins[test] == b).sum()) <= 1


def test_splits_are_identical_in_another_process(glue_dir, rte_labels):
    train, dev = rte_labels
    script = (
        "import numpy as np, sys; from regbench.data import load_raw; "
        "from regbench.splits import split_dev, subsample; from regbench.tasks import get_task; "
        f"raw = load_raw(get_task('rte'), {str(glue_dir)!r}); "
        "v, t = split_dev(get_task('rte'), raw['dev']['label']); "
        "s = subsample(get_task('rte'), np.asarray(raw['train']['label']), 100, 7); "
        "print(','.join(map(str, [*v, -1, *s])))"
    )
    # A different hash seed would expose any dependence on set or dict ordering.
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout
    validation, chosen = out.strip().split(",-1,")
    assert validation == ",".join(map(str, split_dev(get_task("rte"), dev)[0]))
    assert chosen == ",".join(map(str, subsample(get_task("rte"), train, 100, 7)))
