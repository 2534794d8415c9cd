"""Raw GLUE examples from the Hugging Face hub or from a local `glue_data/` folder.

Both sources give the hub's columns: the task's text columns, `label` (an int, or a float for
STS-B) and `idx`, for the splits `train` and `dev` (GLUE's test labels are hidden).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections import Counter
from pathlib import Path

import datasets

from regbench.errors import RegbenchError
from regbench.paths import not_a_file, os_problem
from regbench.splits import strata
from regbench.tasks import Task

log = logging.getLogger(__name__)

GLUE_DIR_ENV = "REGBENCH_GLUE_DIR"
HUB_DATASET = "nyu-mll/glue"


def glue_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local GLUE folder named by the flag or the environment, if any."""
    chosen = data_dir or os.environ.get(GLUE_DIR_ENV)
    return Path(chosen).expanduser() if chosen else None


def describe_source(task: Task, data_dir: str | os.PathLike | None = None) -> str:
    root = glue_dir(data_dir)
    return str(root / task.local.folder) if root else f"hub:{HUB_DATASET}/{task.name}"


def load_raw(task: Task, data_dir: str | os.PathLike | None = None) -> datasets.DatasetDict:
    root = glue_dir(data_dir)
    if root is None:
        return _from_hub(task)
    files = _files(task, root)
    for path in files.values():
        problem = not_a_file(path)
        if problem:
            raise RegbenchError(f"GLUE file {path} {problem}. Point --data-dir (or "
                                f"{GLUE_DIR_ENV}) at a glue_data folder holding real files.")
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise RegbenchError(
            f"No GLUE data for task {task.name!r}: looked for {', '.join(missing)}. "
            f"Point --data-dir (or {GLUE_DIR_ENV}) at a folder holding {task.local.folder}/, "
            "as laid out by the standard GLUE download, or set neither to load it from the hub."
        )
    return datasets.DatasetDict({split: _read_tsv(task, path) for split, path in files.items()})


def _files(task: Task, root: Path) -> dict[str, Path]:
    folder = root / task.local.folder
    return {"train": folder / "train.tsv", "dev": folder / task.local.dev_file}


def _from_hub(task: Task) -> datasets.DatasetDict:
    try:
        raw = datasets.load_dataset(HUB_DATASET, task.name)
    except Exception as err:  # the hub raises many types: offline, not found, rate limited
        raise RegbenchError(
            f"Could not load {HUB_DATASET}/{task.name} from the Hugging Face hub ({err}). "
            f"Without network, point --data-dir (or {GLUE_DIR_ENV}) at a local glue_data folder."
        ) from err
    columns = [*task.text_columns, "label", "idx"]
    return datasets.DatasetDict(
        {"train": raw["train"].select_columns(columns),
         "dev": raw[task.hub_dev_split].select_columns(columns)}
    )


def check_examples(task: Task, raw: datasets.DatasetDict,
                   data_dir: str | os.PathLike | None = None) -> None:
    """An error, naming the file, unless each split of `raw` (from `load_raw(task, data_dir)`) has
    what the protocol asks of it: the training split every label of the task; the dev split two
    examples of each label (or score stratum) it holds, and enough in all for two stratified
    halves."""
    root = glue_dir(data_dir)
    for split in ("train", "dev"):
        source = str(_files(task, root)[split]) if root else f"{HUB_DATASET}/{task.name} {split}"
        _check_split(task, split, raw[split]["label"], source)


def _check_split(task: Task, split: str, labels: list, source: str) -> None:
    counts = Counter(labels if split == "train" else strata(task, labels).tolist())
    if split == "train":
        missing = [name for i, name in enumerate(task.label_names) if not counts[i]]
        if labels and not missing:
            return
        problem = f"no example of label {', '.join(map(repr, missing))}" if labels else "no example"
    else:
        if counts and min(counts.values()) >= 2 and len(labels) >= 2 * len(counts):
            return
        problem = (f"{len(labels)} examples, too few to split into two halves stratified by "
                   f"{'score' if task.is_regression else 'label'}: it needs at least two of each "
                   f"and {2 * max(1, len(counts))} in all")
    raise RegbenchError(f"{source} has {problem}. Download the task again, or point --data-dir "
                        f"(or {GLUE_DIR_ENV}) at a complete copy.")


def _read_tsv(task: Task, path: Path) -> datasets.Dataset:
    layout = task.local
    try:
        content = path.read_bytes()
        text = content.decode("utf-8-sig")
        # GLUE's files are not CSV: quotes are literal text, so quoting must be off.
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t",
                               quoting=csv.QUOTE_NONE))
    except OSError as err:
        raise RegbenchError(f"{path} {os_problem(err)}; it cannot be read.") from None
    except UnicodeDecodeError as err:
        raise RegbenchError(f"{path} is not UTF-8 text (byte {err.start}); download that task "
                            "again.") from None
    except csv.Error as err:
        raise RegbenchError(f"{path} is not a tab-separated GLUE file ({err}); download that "
                            "task again.") from None
    if not rows:
        raise RegbenchError(f"{path} is empty; download that task again.")
    width, first = len(rows[0]), int(layout.header)
    needed = max(*layout.text_fields, layout.label_field) + 1
    if width < needed:
        raise RegbenchError(
            f"{path}, line 1: {width} tab-separated fields, fewer than the {needed} that task "
            f"{task.name!r} reads its text and label from: is it an unlabelled test file? "
            "Download that task again.")
    columns: dict[str, list] = {c: [] for c in (*task.text_columns, "label", "idx")}
    for line_no, row in enumerate(rows[first:], start=first + 1):
        # MNLI's lines carry 11 or 12 fields; every other file has a fixed width.
        if len(row) != width and not (task.name == "mnli" and len(row) in (11, 12)):
            raise RegbenchError(
                f"{path}, line {line_no}: expected {width} tab-separated fields, found {len(row)}. "
                "The file is damaged; download that task again."
            )
        for column, field in zip(task.text_columns, layout.text_fields, strict=True):
            columns[column].append(row[field])
        columns["label"].append(_label(task, row[layout.label_field], path, line_no))
        columns["idx"].append(len(columns["idx"]))
    log.debug("read %d rows from %s", len(columns["idx"]), path)
    features = datasets.Features(
        {**{c: datasets.Value("string") for c in task.text_columns},
         "label": datasets.Value("float32") if task.is_regression
         else datasets.ClassLabel(names=list(task.label_names)),
         "idx": datasets.Value("int32")}
    )
    # A dataset built in memory gets a random fingerprint; the file's digest makes it stable, so
    # the feature cache can key on it.
    return datasets.Dataset.from_dict(columns, features=features).select_columns(
        list(columns), new_fingerprint=hashlib.sha256(content).hexdigest())


def _label(task: Task, raw: str, path: Path, line_no: int) -> float | int:
    try:
        if task.is_regression:
            score = float(raw)
            if 0 <= score <= 5:  # also false for nan
                return score
            raise ValueError(raw)
        if raw in task.label_names:
            return task.label_names.index(raw)
        value = int(raw)  # binary tasks write 0/1 in the hub's label order
        if 0 <= value < task.num_labels:
            return value
    except ValueError:
        pass
    raise RegbenchError(
        f"{path}, line {line_no}: label {raw!r} is not one of "
        f"{'a number from 0 to 5' if task.is_regression else task.label_names} for task "
        f"{task.name!r}."
    )
