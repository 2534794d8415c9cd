import pytest

from regbench.errors import RegbenchError
from regbench.tasks import TASKS, get_task


@pytest.mark.parametrize("name, expected", [
    ("RTE", "rte"), ("sts-b", "stsb"), ("STSB", "stsb"), ("sst-2", "sst2"), ("SST2", "sst2"),
    ("MNLI", "mnli"), ("cola", "cola"), ("QQP", "qqp"), ("qnli", "qnli"), ("WNLI", "wnli"),
    ("mrpc", "mrpc"),
])
def test_names_and_aliases(name, expected):
    assert get_task(name).name == expected


def test_all_nine_glue_tasks_are_known():
    assert set(TASKS) == {"rte", "mrpc", "cola", "stsb", "sst2", "qnli", "qqp", "mnli", "wnli"}


def test_unknown_task_suggests_the_closest():
    with pytest.raises(RegbenchError, match=r"Unknown task 'rtee'.*Did you mean 'rte'"):
        get_task("rtee")


def test_metrics_follow_glue():
    assert get_task("mrpc").metric == "f1_accuracy" and get_task("mrpc").extra_metrics == (
        "f1", "accuracy")
    assert get_task("cola").metric == "mcc"
    assert get_task("stsb").is_regression and get_task("stsb").num_labels == 1
    assert get_task("mnli").num_labels == 3
