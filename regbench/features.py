"""Tokenised tasks, cached on disk, and the dynamically padded batches made from them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import datasets
import numpy as np
import torch

from regbench.data import check_examples, describe_source, glue_dir, load_raw
from regbench.errors import RegbenchError
from regbench.metrics import test_reference
from regbench.modeling import load_tokenizer
from regbench.splits import DEV_SPLIT_SEED, split_dev, subsample
from regbench.tasks import Task

log = logging.getLogger(__name__)

CACHE_ENV = "REGBENCH_CACHE"
FEATURES_VERSION = "1"  # bump when the stored features change shape


def cache_root() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "regbench"
    return Path(os.environ.get(CACHE_ENV, default))


def _tokenizer_fingerprint(tokenizer) -> str:
    # The serialised fast tokenizer holds the vocabulary, normaliser and special tokens: all that
    # decides the ids. Its name alone would miss a locally edited copy. Truncation and padding are
    # left out: they record the last call's arguments, and max_length is in the key anyway.
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        state = tokenizer.get_vocab()
    else:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


def _raw_fingerprint(raw: datasets.DatasetDict) -> str:
    joined = "".join(raw[split]._fingerprint for split in sorted(raw))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def load_features(task: Task, tokenizer, max_length: int,
                  data_dir: str | os.PathLike | None = None) -> datasets.DatasetDict:
    """`train` and `dev` as token ids and labels, tokenised once per (data, tokenizer, length)."""
    raw = load_raw(task, data_dir)
    check_examples(task, raw, data_dir)
    key = hashlib.sha256(json.dumps(
        [FEATURES_VERSION, task.name, _raw_fingerprint(raw), _tokenizer_fingerprint(tokenizer),
         max_length]).encode()).hexdigest()[:20]
    path = cache_root() / "features" / f"{task.name}-{key}"
    if os.path.lexists(path):
        cached = _cached_entry(path, raw)
        if cached is not None:
            log.info("features of %s from cache %s", task.name, path)
            return cached

    log.info("tokenising %s from %s (max length %d)", task.name, describe_source(task, data_dir),
             max_length)

    def tokenize(batch):
        texts = [batch[c] for c in task.text_columns]
        encoded = tokenizer(*texts, truncation=True, max_length=max_length)
        return {k: encoded[k] for k in ("input_ids", "token_type_ids") if k in encoded}

    features = raw.map(tokenize, batched=True, remove_columns=list(task.text_columns),
                       desc=f"tokenising {task.name}")
    # Written beside its final place, then renamed: a killed process never leaves half a cache.
    staging = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=".staging-"))
        with _quiet_datasets():
            features.save_to_disk(str(staging))
    except OSError as err:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        reason = err.strerror or err
        raise RegbenchError(f"Cannot write the feature cache in {path.parent} ({reason}). Point "
                            f"{CACHE_ENV} at a writable folder with free space.") from None
    try:
        staging.rename(path)
    except OSError:  # another process cached the same features first
        shutil.rmtree(staging, ignore_errors=True)
    with _quiet_datasets():
        return datasets.load_from_disk(str(path))


def _cached_entry(path: Path, raw: datasets.DatasetDict) -> datasets.DatasetDict | None:
    """The features cached at `path`, checked against the raw data they were made from; None,
    the entry removed, when it is damaged (cut short, emptied, edited, not a cache entry), so
    that it is made again."""
    try:
        with _quiet_datasets():
            cached = datasets.load_from_disk(str(path))
        for split in raw:
            if "input_ids" not in cached[split].column_names or (
                    cached[split]["label"] != raw[split]["label"]):
                raise ValueError(f"its {split} split does not match the data")
        return cached
    # A cache entry is disposable, and its damage shows as any of the many errors of datasets
    # and pyarrow: whatever it is, the entry is made again.
    except Exception as err:  # noqa: BLE001
        log.warning("feature cache entry %s is damaged (%s: %s); making it again", path,
                    type(err).__name__, err)
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError as err:
        raise RegbenchError(f"The feature cache entry {path} is damaged and cannot be removed "
                            f"({err.strerror or err}): delete it (rm -r '{path}'), or point "
                            f"{CACHE_ENV} at another folder.") from None
    return None


@contextlib.contextmanager
def _quiet_datasets():
    """Saving and loading take a blink; their progress bars would only clutter the log."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


@dataclass
class Examples:
    """One split held in memory as python lists: batching them is then cheap."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: np.ndarray

    @classmethod
    def select(cls, split: datasets.Dataset, indices) -> Examples:
        rows = split.select(indices)
        return cls(rows["input_ids"],
                   rows["token_type_ids"] if "token_type_ids" in rows.column_names else None,
                   np.asarray(rows["label"]))

    def __len__(self) -> int:
        return len(self.input_ids)

    def take(self, indices) -> Examples:
        """The examples at `indices`, in their order."""
        types = self.token_type_ids
        return Examples([self.input_ids[i] for i in indices],
                        None if types is None else [types[i] for i in indices],
                        self.labels[np.asarray(indices, dtype=int)])

    @cached_property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self))

    def collate(self, indices, pad_id: int) -> dict[str, torch.Tensor]:
        """A batch padded to its own longest example (dynamic padding)."""
        width = int(self.lengths[indices].max())
        ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        types = None if self.token_type_ids is None else torch.zeros_like(mask)
        for row, i in enumerate(indices):
            n = len(self.input_ids[i])
            ids[row, :n] = torch.as_tensor(self.input_ids[i])
            mask[row, :n] = 1
            if types is not None:
                types[row, :n] = torch.as_tensor(self.token_type_ids[i])
        batch = {"input_ids": ids, "attention_mask": mask,
                 "labels": torch.as_tensor(self.labels[indices],
                                           dtype=torch.float32 if self.labels.dtype.kind == "f"
                                           else torch.long)}
        if types is not None:
            batch["token_type_ids"] = types
        return batch


def training_batches(lengths: np.ndarray, batch_size: int, generator: torch.Generator,
                     group_by_length: bool) -> Iterator[np.ndarray]:
    """One epoch of shuffled batch indices. Grouping puts similar lengths together inside
    windows of 50 batches, so little padding is computed while the order stays random."""
    order = torch.randperm(len(lengths), generator=generator).numpy()
    if group_by_length:
        window = 50 * batch_size
        windows = [order[i:i + window] for i in range(0, len(order), window)]
        order = np.concatenate([w[np.argsort(-lengths[w], kind="stable")] for w in windows])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    yield from batches


def evaluation_batches(lengths: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    order = np.argsort(-lengths, kind="stable")  # order does not matter to metrics, padding does
    for i in range(0, len(order), batch_size):
        yield order[i:i + batch_size]


@dataclass
class TaskData:
    """The examples of one (task, N, data seed): the training subset and the two dev halves."""

    task: Task
    train: Examples
    validation: Examples
    test: Examples
    reference: dict  # regbench.metrics.test_reference: what the test scores are judged against

    @classmethod
    def prepare(cls, task: Task, features: datasets.DatasetDict, n_train: int,
                data_seed: int) -> TaskData:
        train_labels = features["train"]["label"]
        if n_train > len(train_labels):
            # Trained on fewer, the run would be stored and ranked as the size asked for.
            raise RegbenchError(f"A training size of {n_train} is more than the "
                                f"{len(train_labels)} examples of {task.name}'s training split; "
                                f"choose sizes of at most {len(train_labels)}.")
        validation, test = split_dev(task, features["dev"]["label"])
        return cls(task,
                   Examples.select(features["train"],
                                   subsample(task, train_labels, n_train, data_seed)),
                   Examples.select(features["dev"], validation),
                   Examples.select(features["dev"], test),
                   test_reference(task, train_labels,
                                  np.asarray(features["dev"]["label"])[test]))

    def validation_sample(self, size: int) -> Examples:
        """The validation half, or a stratified sample of `size` of its examples, the same for
        every run: what tuning and pruning score on when the whole half costs too much."""
        if not size or size >= len(self.validation):
            return self.validation
        return self.validation.take(subsample(self.task, self.validation.labels, size,
                                              DEV_SPLIT_SEED))


@lru_cache(maxsize=8)
def _cached_features(task: Task, model: str, max_length: int, data_dir: str | None):
    return load_features(task, load_tokenizer(model), max_length, data_dir)


@lru_cache(maxsize=32)
def _cached_task_data(task: Task, n_train: int, data_seed: int, model: str, max_length: int,
                      data_dir: str | None) -> TaskData:
    features = _cached_features(task, model, max_length, data_dir)
    return TaskData.prepare(task, features, n_train, data_seed)


def task_data(task: Task, n_train: int, data_seed: int, model: str, max_length: int,
              data_dir: str | os.PathLike | None = None) -> TaskData:
    """The examples one run trains and evaluates on, prepared once per process: a suite asks
    for the same (task, N, data seed) for every regularizer and seed. Callers must not change
    the returned examples."""
    root = glue_dir(data_dir)  # resolved here: the environment may change between calls
    return _cached_task_data(task, n_train, data_seed, model, max_length,
                             str(root) if root else None)
