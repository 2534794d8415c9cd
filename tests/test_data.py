import datasets
import pytest

from regbench import data as data_module
from regbench.data import load_raw
from regbench.errors import RegbenchError
from regbench.tasks import get_task

# Row counts of ../shared/glue/README.md, header lines excluded.
COUNTS = {"rte": (2490, 277), "mrpc": (3668, 408), "cola": (8551, 1043), "stsb": (5749, 1500)}


@pytest.mark.parametrize("name", COUNTS)
def test_row_counts_match_glue(glue_dir, name):
    raw = load_raw(get_task(name), glue_dir)
    assert (raw["train"].num_rows, raw["dev"].num_rows) == COUNTS[name]


def test_label_balance_of_rte_and_mrpc(glue_dir):
    rte = load_raw(get_task("rte"), glue_dir)["train"]["label"]
    assert (rte.count(0), rte.count(1)) == (1249, 1241)  # entailment / not_entailment
    mrpc = load_raw(get_task("mrpc"), glue_dir)["train"]["label"]
    assert (mrpc.count(1), mrpc.count(0)) == (2474, 1194)


def test_columns_are_the_hubs(glue_dir):
    mrpc = load_raw(get_task("mrpc"), glue_dir)["train"]
    assert mrpc.column_names == ["sentence1", "sentence2", "label", "idx"]
    assert mrpc[0]["sentence1"].startswith("Amrozi accused his brother")  # BOM header skipped
    cola = load_raw(get_task("cola"), glue_dir)["train"]
    assert cola[0] == {"sentence": "Our friends won't buy this analysis, let alone the next one we "
                       "propose.", "label": 1, "idx": 0}  # no header line to lose
    stsb = load_raw(get_task("stsb"), glue_dir)["train"]
    assert stsb[0]["label"] == 5.0 and stsb[0]["sentence2"] == "An air plane is taking off."


def _write(folder, name, lines):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_quotes_are_text_not_csv_quoting(tmp_path):
    lines = ["index\tsentence1\tsentence2\tlabel",
             '0\tHe said "yes\tand left.\tentailment',
             '1\tShe "replied\tnothing" more.\tnot_entailment']
    _write(tmp_path / "RTE", "train.tsv", lines)
    _write(tmp_path / "RTE", "dev.tsv", lines)
    train = load_raw(get_task("rte"), tmp_path)["train"]
    assert train["sentence1"] == ['He said "yes', 'She "replied'] and train["label"] == [0, 1]


def test_malformed_line_names_file_and_line(tmp_path):
    _write(tmp_path / "RTE", "train.tsv", ["index\tsentence1\tsentence2\tlabel",
                                           "0\ta\tb\tentailment", "1\ta\tb"])
    _write(tmp_path / "RTE", "dev.tsv", ["index\tsentence1\tsentence2\tlabel"])
    with pytest.raises(RegbenchError, match=r"RTE/train.tsv, line 3: expected 4 .* found 3"):
        load_raw(get_task("rte"), tmp_path)


def test_unknown_label_names_file_and_line(tmp_path):
    _write(tmp_path / "RTE", "train.tsv", ["index\tsentence1\tsentence2\tlabel",
                                           "0\ta\tb\tmaybe"])
    _write(tmp_path / "RTE", "dev.tsv", ["index\tsentence1\tsentence2\tlabel"])
    with pytest.raises(RegbenchError, match=r"train.tsv, line 2: label 'maybe'"):
        load_raw(get_task("rte"), tmp_path)


def test_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(RegbenchError) as err:
        load_raw(get_task("sst-2"), tmp_path)
    message = str(err.value)
    assert str(tmp_path / "SST-2" / "train.tsv") in message
    assert "--data-dir" in message and "REGBENCH_GLUE_DIR" in message


def test_environment_variable_names_the_folder(glue_dir, monkeypatch):
    monkeypatch.setenv("REGBENCH_GLUE_DIR", str(glue_dir))
    assert load_raw(get_task("rte"))["dev"].num_rows == 277


@pytest.mark.parametrize("task, folder, dev, lines, expected", [
    ("sst2", "SST-2", "dev.tsv", ["sentence\tlabel", "a fine film\t1"],
     {"sentence": "a fine film", "label": 1}),
    ("qnli", "QNLI", "dev.tsv", ["index\tquestion\tsentence\tlabel", "0\tWho?\tHim.\tentailment"],
     {"question": "Who?", "sentence": "Him.", "label": 0}),
    ("qqp", "QQP", "dev.tsv", ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
                               "0\t1\t2\tHow?\tWhy?\t0"],
     {"question1": "How?", "question2": "Why?", "label": 0}),
    ("wnli", "WNLI", "dev.tsv", ["index\tsentence1\tsentence2\tlabel", "0\tA\tB\t1"],
     {"sentence1": "A", "sentence2": "B", "label": 1}),
    ("mnli", "MNLI", "dev_matched.tsv",
     ["\t".join(f"c{i}" for i in range(12)),
      "\t".join(["0"] * 8 + ["The cat sat.", "A cat sat.", "neutral", "contradiction"]),
      "\t".join(["0"] * 8 + ["It rains.", "It is dry.", "contradiction"])],
     {"premise": "The cat sat.", "hypothesis": "A cat sat.", "label": 2}),
])
def test_other_glue_layouts(tmp_path, task, folder, dev, lines, expected):
    _write(tmp_path / folder, "train.tsv", lines)
    _write(tmp_path / folder, dev, lines)
    first = load_raw(get_task(task), tmp_path)["dev"][0]
    assert {k: first[k] for k in expected} == expected


def test_hub_source_gives_the_same_columns(glue_dir, monkeypatch):
    """The hub cannot be reached here: stand in for `load_dataset` with the hub's own layout
    (splits train/validation/test, extra columns) built from the local files."""
    local = load_raw(get_task("rte"), glue_dir)
    calls = []

    def fake_load_dataset(path, name):
        calls.append((path, name))
        return datasets.DatasetDict({
            "train": local["train"].add_column("extra", [0] * local["train"].num_rows),
            "validation": local["dev"], "test": local["dev"]})

    monkeypatch.setattr(data_module.datasets, "load_dataset", fake_load_dataset)
    monkeypatch.delenv("REGBENCH_GLUE_DIR", raising=False)
    hub = load_raw(get_task("rte"))
    assert calls == [("nyu-mll/glue", "rte")]
    assert hub["train"].column_names == local["train"].column_names
    assert hub["dev"]["label"] == local["dev"]["label"]


def test_unreachable_hub_says_how_to_work_offline(monkeypatch):
    def offline(path, name):
        raise ConnectionError("no network")

    monkeypatch.setattr(data_module.datasets, "load_dataset", offline)
    monkeypatch.delenv("REGBENCH_GLUE_DIR", raising=False)
    with pytest.raises(RegbenchError, match="nyu-mll/glue/cola.*--data-dir"):
        load_raw(get_task("cola"))
