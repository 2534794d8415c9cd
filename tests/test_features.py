import numpy as np
import torch

from regbench.features import load_features, training_batches
from regbench.modeling import load_tokenizer
from regbench.tasks import get_task


class CountingTokenizer:
    """The real tokenizer, with a count of how often it is asked to tokenise."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_second_load_tokenises_nothing(glue_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("REGBENCH_CACHE", str(tmp_path))
    first = CountingTokenizer(load_tokenizer("minilm"))
    features = load_features(get_task("rte"), first, 64, glue_dir)
    assert first.calls > 0
    second = CountingTokenizer(load_tokenizer("minilm"))
    again = load_features(get_task("rte"), second, 64, glue_dir)
    assert second.calls == 0
    assert again["train"]["input_ids"] == features["train"]["input_ids"]
    assert max(len(ids) for ids in features["train"]["input_ids"]) == 64


def test_cache_key_includes_the_max_length(glue_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("REGBENCH_CACHE", str(tmp_path))
    load_features(get_task("rte"), load_tokenizer("minilm"), 64, glue_dir)
    counting = CountingTokenizer(load_tokenizer("minilm"))
    load_features(get_task("rte"), counting, 32, glue_dir)
    assert counting.calls > 0
    assert len(list((tmp_path / "features").iterdir())) == 2


def test_batches_are_padded_to_their_longest_example(rte_data):
    lengths = rte_data.train.lengths
    batch = rte_data.train.collate([0, 1, 2], pad_id=0)
    width = int(lengths[:3].max())
    assert batch["input_ids"].shape == (3, width)
    assert batch["attention_mask"].sum(1).tolist() == lengths[:3].tolist()
    assert batch["labels"].tolist() == rte_data.train.labels[:3].tolist()
    shortest = int(np.argmin(lengths[:3]))
    assert (batch["input_ids"][shortest, lengths[shortest]:] == 0).all()


def test_an_epoch_visits_every_example_once():
    lengths = np.random.default_rng(0).integers(5, 128, size=1000)
    for grouped in (False, True):
        batches = list(training_batches(lengths, 16, torch.Generator().manual_seed(0), grouped))
        assert sorted(np.concatenate(batches).tolist()) == list(range(1000))


def test_grouping_by_length_cuts_padding():
    lengths = np.random.default_rng(0).integers(5, 128, size=1600)

    def padded(grouped):
        batches = training_batches(lengths, 16, torch.Generator().manual_seed(0), grouped)
        return sum(len(b) * lengths[b].max() for b in batches)

    assert padded(True) < 0.8 * padded(False)
