"""The GLUE tasks: what each one reads, predicts and is scored by."""

from __future__ import annotations

from dataclasses import dataclass

from regbench.errors import unknown_name


@dataclass(frozen=True)
class LocalLayout:
    """Where a task's columns sit in the `glue_data/<TASK>/*.tsv` files (0-based field indices;
    a negative index counts from the end, for MNLI's 11- or 12-field lines)."""

    folder: str
    text_fields: tuple[int, ...]
    label_field: int
    header: bool = True
    dev_file: str = "dev.tsv"


@dataclass(frozen=True)
class Task:
    name: str  # the Hugging Face config name of nyu-mll/glue
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...]  # empty for regression
    metric: str  # the primary metric, a key of regbench.metrics.METRICS
    extra_metrics: tuple[str, ...]
    local: LocalLayout
    hub_dev_split: str = "validation"

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        return len(self.label_names) or 1


_ENTAIL = ("entailment", "not_entailment")

TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("rte", ("sentence1", "sentence2"), _ENTAIL, "accuracy", (),
             LocalLayout("RTE", (1, 2), 3)),
        Task("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), "f1_accuracy",
             ("f1", "accuracy"), LocalLayout("MRPC", (3, 4), 0)),
        Task("cola", ("sentence",), ("unacceptable", "acceptable"), "mcc", ("accuracy",),
             LocalLayout("CoLA", (3,), 1, header=False)),
        Task("stsb", ("sentence1", "sentence2"), (), "pearson_spearman", ("pearson", "spearman"),
             LocalLayout("STS-B", (7, 8), 9)),
        Task("sst2", ("sentence",), ("negative", "positive"), "accuracy", (),
             LocalLayout("SST-2", (0,), 1)),
        Task("qnli", ("question", "sentence"), _ENTAIL, "accuracy", (),
             LocalLayout("QNLI", (1, 2), 3)),
        Task("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), "f1_accuracy",
             ("f1", "accuracy"), LocalLayout("QQP", (3, 4), 5)),
        Task("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
             "accuracy", (), LocalLayout("MNLI", (8, 9), -1, dev_file="dev_matched.tsv"),
             hub_dev_split="validation_matched"),
        Task("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"), "accuracy", (),
             LocalLayout("WNLI", (1, 2), 3)),
    ]
}

_ALIASES = {"sts-b": "stsb", "sst-2": "sst2", "mnli-m": "mnli", "mnli_matched": "mnli"}


def get_task(name: str) -> Task:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise unknown_name("task", name, [*TASKS, *_ALIASES])
    return TASKS[key]

