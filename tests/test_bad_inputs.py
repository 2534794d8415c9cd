"""Bad inputs, as a careless user and a hostile environment give them: each one a single line on
stderr that names the problem, exit code 2, no traceback, and nothing left behind. One table;
each case runs through `regbench.cli.main` as the command line would, and a few in a process of
their own."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
import torch

from regbench import features, leaderboard, strict_yaml
from regbench.cli import _warn_below_min_steps, main, parse_params
from regbench.errors import RegbenchError
from regbench.harness import fine_tune
from regbench.jsonout import strict_json
from regbench.modeling import load_tokenizer
from regbench.plugin import Regularizer
from regbench.recipe import Recipe
from regbench.store import Store, runs
from regbench.suite import load_suite
from regbench.tasks import get_task

TINY = ("tasks: [rte]\nsizes: [16]\nregularizers: [vanilla]\nfinal_seeds: [1]\n"
        "tuning_seeds: [101]\ntuning: {trials: 0}\n"
        "recipe: {epochs: 1, min_steps: 0, batch_size: 8, max_length: 32, evaluations: 1}\n")
RUN = "run --suite {suite} --storage sqlite:///{tmp}/new.db --data-dir {glue}"
TRAIN = "train --task rte --n-train 8 --max-length 32 --data-dir {glue}"
RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


def suite(**lines: str) -> str:
    """TINY with some of its top-level lines replaced (a key set to None is left out)."""
    kept = {line.split(":")[0]: line for line in TINY.splitlines()}
    kept.update({key: f"{key}: {value}" for key, value in lines.items() if value is not None})
    return "".join(f"{line}\n" for key, line in kept.items() if lines.get(key, "") is not None)


def recipe(**values: str) -> str:
    base = {"epochs": "1", "min_steps": "0", "batch_size": "8", "max_length": "32"}
    return suite(recipe="{" + ", ".join(f"{k}: {v}" for k, v in {**base, **values}.items()) + "}")


def rte(*labels: str) -> str:
    return RTE_HEADER + "".join(f"{i}\tA man sleeps.\tA man rests.\t{label}\n"
                                for i, label in enumerate(labels))


GOOD_RTE = rte(*["entailment", "not_entailment"] * 4)


@dataclass
class Case:
    argv: str  # the command line, with {suite}, {tmp}, {glue} and {data} filled in
    message: str  # a regular expression the one-line error must match
    suite: str | None = None  # the YAML written to {suite}
    files: dict[str, str | bytes] = field(default_factory=dict)  # under {tmp}
    env: dict[str, str] = field(default_factory=dict)  # {tmp} filled in
    code: int = 2

    def __str__(self) -> str:  # the test's id
        return self.message.replace("\\", "")[:70]


def bad_suite(message: str, text: str) -> Case:
    return Case(RUN, message, suite=text)


def data(message: str, task: str = "rte", **files: str | bytes) -> Case:
    """`train` on a data folder holding `files` (RTE/train.tsv written as RTE_train)."""
    return Case(f"train --task {task} --n-train 8 --max-length 32 --data-dir {{tmp}}/data",
                message, files={f"data/{k.replace('_', '/', 1)}.tsv": v for k, v in files.items()})


NO_STORE = r"no such file, so no runs to show"
CASES = [
    # -- the suite's structure ---------------------------------------------------------------
    bad_suite(r"must be a mapping of suite keys, not list", "- rte\n"),
    bad_suite(r"must be a mapping of suite keys, not NoneType", ""),
    bad_suite(r"is not valid YAML", "tasks: [rte\n"),
    bad_suite(r"key 'tasks' is given twice", TINY + "tasks: [mrpc]\n"),
    bad_suite(r"key 'seeds' is not a suite key; the keys are: .*final_seeds",
              TINY + "seeds: [1]\n"),
    bad_suite(r"key 'tasks' is required", suite(tasks=None)),
    bad_suite(r"key 'sizes' is required", suite(sizes=None)),
    bad_suite(r"key 'regularizers' is required", suite(regularizers=None)),
    bad_suite(r"key 'name' must be a string, not 5", TINY + "name: 5\n"),
    bad_suite(r"name 'a/b' must be a name of 1 to 100 printable characters without slashes",
              TINY + "name: a/b\n"),
    bad_suite(r"key 'model' must be a string", TINY + "model: [minilm]\n"),
    # tasks
    bad_suite(r"tasks must be a non-empty list of task names; got \[\]", suite(tasks="[]")),
    bad_suite(r"tasks must be a non-empty list of task names; got 'rte'", suite(tasks="rte")),
    bad_suite(r"Unknown task 'rtx'\. Did you mean 'rte'", suite(tasks="[rtx]")),
    bad_suite(r"Unknown task 'sst'\. Did you mean .*'sst2'", suite(tasks="[rte, sst]")),
    bad_suite(r"tasks lists 'rte' more than once", suite(tasks="[rte, RTE]")),
    bad_suite(r"tasks lists 'stsb' more than once", suite(tasks="[sts-b, stsb]")),
    # sizes
    bad_suite(r"sizes\[0\] = 0 is not allowed; it must be an integer ≥ 1", suite(sizes="[0]")),
    bad_suite(r"sizes\[1\] = -5 is not allowed; it must be an integer ≥ 1",
              suite(sizes="[16, -5]")),
    bad_suite(r"sizes\[0\] = 'ten' is not allowed; it must be an integer", suite(sizes="[ten]")),
    bad_suite(r"sizes\[0\] = 1\.5 is not allowed; it must be an integer", suite(sizes="[1.5]")),
    bad_suite(r"sizes\[0\] = True is not allowed", suite(sizes="[true]")),
    bad_suite(r"sizes lists 16 more than once", suite(sizes="[16, 32, 16]")),
    bad_suite(r"sizes must be a non-empty list, each an integer ≥ 1", suite(sizes="[]")),
    bad_suite(r"sizes must be a non-empty list", suite(sizes="16")),
    bad_suite(r"sizes\[0\] = 1099511627776 is not allowed; .*≤ 2147483647",
              suite(sizes="[1099511627776]")),
    # seeds
    bad_suite(r"final_seeds\[0\] = -1 is not allowed; it must be an integer ≥ 0",
              suite(final_seeds="[-1]")),
    bad_suite(r"final_seeds lists 1 more than once", suite(final_seeds="[1, 2, 1]")),
    bad_suite(r"final_seeds\[0\] = 1180591620717411303424 is not allowed; .*≤ 2147483647",
              suite(final_seeds="[1180591620717411303424]")),
    bad_suite(r"final_seeds must be a non-empty list", suite(final_seeds="[]")),
    bad_suite(r"tuning_seeds\[0\] = 1\.5 is not allowed", suite(tuning_seeds="[1.5]")),
    bad_suite(r"seeds \[1\] are both tuning and final seeds", suite(tuning_seeds="[1, 101]")),
    bad_suite(r"data_seed = -1 is not allowed; it must be an integer ≥ 0",
              TINY + "data_seed: -1\n"),
    bad_suite(r"data_seed = 'abc' is not allowed", TINY + "data_seed: abc\n"),
    bad_suite(r"data_seed = 4294967296 is not allowed", TINY + "data_seed: 4294967296\n"),
    # regularizers and their options
    bad_suite(r"regularizers must be a non-empty list of regularizer names; got \[\]",
              suite(regularizers="[]")),
    bad_suite(r"'regularizers' must be a list of names or a mapping", suite(regularizers="l2sp")),
    bad_suite(r"regularizers lists 'vanilla' more than once",
              suite(regularizers="[vanilla, l2sp, vanilla]")),
    bad_suite(r"key 'vanilla' is given twice", suite(regularizers="{vanilla: {}, vanilla: {}}")),
    bad_suite(r"regularizers must be a non-empty list of regularizer names",
              suite(regularizers="[[vanilla]]")),
    bad_suite(r"the options of regularizer 'vanilla' must be a mapping name -> value, not 3",
              suite(regularizers="{vanilla: 3}")),
    bad_suite(r"Unknown regularizer 'l2-sp'\. Did you mean 'l2sp'", suite(regularizers="[l2-sp]")),
    bad_suite(r"Regularizer 'l2sp' has no parameter gamma; its parameters are: alpha, beta",
              suite(regularizers="{l2sp: {gamma: 1}}")),
    bad_suite(r"Regularizer 'mixout': p = 1\.5 is not allowed; it must be a number ≥ 0 and ≤ 1",
              suite(regularizers="{mixout: {p: 1.5}}")),
    bad_suite(r"Regularizer 'smart': teacher = 'maybe' is not allowed; it must be true or false",
              suite(regularizers="{smart: {teacher: maybe}}")),
    bad_suite(r"Regularizer 'lnsr': sigma = -1 is not allowed; it must be a number ≥ 0",
              suite(regularizers="{lnsr: {sigma: -1}}")),
    bad_suite(r"Regularizer 'weight_decay': weight_decay = -5 is not allowed",
              suite(regularizers="{weight_decay: {weight_decay: -5}}")),
    bad_suite(r"Regularizer 'l2sp': alpha = 'abc' is not allowed; it must be a number ≥ 0",
              suite(regularizers="{l2sp: {alpha: abc}}")),
    bad_suite(r"Regularizer 'lnsr': inject_layer = 6 is not allowed; it must be an integer ≥ 0 "
              r"and ≤ 5", suite(regularizers="{lnsr: {inject_layer: 6}}")),
    bad_suite(r"Regularizer 'lnsr': samples = 0 is not allowed", suite(regularizers="{lnsr: "
                                                                           "{samples: 0}}")),
    bad_suite(r"Regularizer 'smart': K = 1\.5 is not allowed; it must be an integer",
              suite(regularizers="{smart: {K: 1.5}}")),
    bad_suite(r"Regularizer 'mixout': p = nan is not allowed", suite(regularizers="{mixout: "
                                                                          "{p: .nan}}")),
    # tuning
    bad_suite(r"key 'tuning' must be a mapping of tuning keys, not 5", suite(tuning="5")),
    bad_suite(r"Unknown tuning key\(s\) budget; the tuning has: pruner, sampler_seed, trials",
              suite(tuning="{budget: 3}")),
    bad_suite(r"tuning trials = -1 is not allowed; it must be an integer ≥ 0",
              suite(tuning="{trials: -1}")),
    bad_suite(r"tuning trials = 1\.5 is not allowed", suite(tuning="{trials: 1.5}")),
    bad_suite(r"tuning trials = True is not allowed", suite(tuning="{trials: true}")),
    bad_suite(r"tuning pruner = 'asha' is not allowed; it must be one of 'none', 'median', "
              r"'hyperband'", suite(tuning="{pruner: asha}")),
    bad_suite(r"tuning sampler_seed = -1 is not allowed", suite(tuning="{sampler_seed: -1}")),
    # the recipe
    bad_suite(r"key 'recipe' must be a mapping of recipe keys", suite(recipe="[1, 2]")),
    bad_suite(r"Unknown recipe key\(s\) lr; the recipe has: .*learning_rate", recipe(lr="1.0")),
    bad_suite(r"Recipe learning_rate = 0 is not allowed; it must be a number > 0",
              recipe(learning_rate="0")),
    bad_suite(r"Recipe learning_rate = -0\.0001 is not allowed; it must be a number > 0",
              recipe(learning_rate="-1.0e-4")),
    bad_suite(r"Recipe learning_rate = 'fast' is not allowed", recipe(learning_rate="fast")),
    bad_suite(r"Recipe learning_rate = nan is not allowed", recipe(learning_rate=".nan")),
    bad_suite(r"Recipe learning_rate = inf is not allowed", recipe(learning_rate=".inf")),
    bad_suite(r"Recipe batch_size = 0 is not allowed; it must be an integer ≥ 1",
              recipe(batch_size="0")),
    bad_suite(r"Recipe batch_size = 8\.5 is not allowed", recipe(batch_size="8.5")),
    bad_suite(r"Recipe epochs = -1 is not allowed; it must be an integer ≥ 0", recipe(epochs="-1")),
    bad_suite(r"epochs and min_steps are both 0: a run would take no step",
              recipe(epochs="0", min_steps="0")),
    bad_suite(r"Recipe min_steps = -1 is not allowed", recipe(min_steps="-1")),
    bad_suite(r"Recipe warmup_ratio = 1\.0 is not allowed; it must be a number ≥ 0 and < 1",
              recipe(warmup_ratio="1.0")),
    bad_suite(r"Recipe max_grad_norm = 0 is not allowed", recipe(max_grad_norm="0")),
    bad_suite(r"Recipe max_length = 4 is not allowed; it must be an integer ≥ 8",
              recipe(max_length="4")),
    bad_suite(r"max_length = 4096 is more than model 'minilm' takes \(512 positions\)",
              recipe(max_length="4096")),
    bad_suite(r"Recipe evaluations = 0 is not allowed", recipe(evaluations="0")),
    bad_suite(r"Recipe eval_batch_size = -1 is not allowed", recipe(eval_batch_size="-1")),
    bad_suite(r"Recipe precision = 'fp16' is not allowed; it must be one of 'auto', 'bf16'",
              recipe(precision="fp16")),
    bad_suite(r"Recipe group_by_length = 'yes' is not allowed; it must be true or false",
              recipe(group_by_length="'yes'")),
    Case(RUN, r"Could not load model '.*/no-model': .*Name a Hugging Face model id, a local model "
              r"folder, or 'minilm'", suite=TINY + "model: {tmp}/no-model\n"),
    # the suite file itself
    Case("run --suite {tmp}/missing.yaml", r"Suite file .*missing\.yaml does not exist"),
    Case("run --suite {tmp}", r"Suite file .* is a folder, not a file"),
    Case("run --suite quickstar", r"Unknown suite 'quickstar'\. Did you mean 'quickstart'"),
    Case("run --suite {tmp}/latin1.yaml", r"latin1\.yaml cannot be read: 'utf-8' codec",
         files={"latin1.yaml": "tasks: [rte]  # caf\xe9\n".encode("latin-1")}),
    # -- the command line --------------------------------------------------------------------
    Case(RUN + " --tasks rte,rte", r"--tasks lists 'rte' more than once", suite=TINY),
    Case(RUN + " --tasks rtx", r"Unknown task 'rtx'", suite=TINY),
    Case(RUN + " --tasks ,", r"--tasks must be a non-empty list", suite=TINY),
    Case(RUN + " --sizes 0", r"--sizes\[0\] = 0 is not allowed; it must be an integer ≥ 1",
         suite=TINY),
    Case(RUN + " --sizes -5", r"--sizes\[0\] = -5 is not allowed", suite=TINY),
    Case(RUN + " --sizes 16,16", r"--sizes lists 16 more than once", suite=TINY),
    Case(RUN + " --sizes 1e3", r"argument --sizes: '1e3' is not a comma-separated list of "
                               r"integers", suite=TINY),
    Case(RUN + " --seeds 1,1", r"--seeds lists 1 more than once", suite=TINY),
    Case(RUN + " --seeds -1,2", r"--seeds\[0\] = -1 is not allowed", suite=TINY),
    Case(RUN + " --seeds 1180591620717411303424", r"--seeds\[0\] = 1180591620717411303424 is not "
                                                  r"allowed", suite=TINY),
    Case(RUN + " --seeds 101", r"seeds \[101\] are both tuning and final seeds", suite=TINY),
    Case(RUN + " --regularizers nope", r"Unknown regularizer 'nope'", suite=TINY),
    Case(RUN + " --regularizers vanilla,vanilla", r"--regularizers lists 'vanilla' more than once",
         suite=TINY),
    Case(RUN + " --trials -1", r"tuning trials = -1 is not allowed", suite=TINY),
    Case(RUN + " --trials x", r"argument --trials: invalid int value: 'x'", suite=TINY),
    Case(RUN + " --heartbeat-timeout 0", r"--heartbeat-timeout = 0\.0 is not allowed; it must be "
                                         r"a number > 0", suite=TINY),
    Case(RUN + " --heartbeat-timeout nan", r"--heartbeat-timeout = nan is not allowed",
         suite=TINY),
    Case(RUN + " --device tpu", r"Unknown device 'tpu'; use auto, cpu, cuda or cuda:N",
         suite=TINY),
    Case(RUN + " --device cuda:7", r"Device 'cuda:7' asked for, but", suite=TINY),
    Case(RUN + " --model {tmp}", r"Could not load model .*Unrecognized model", suite=TINY),
    Case(RUN + " --epochs 3", r"regbench: unrecognized arguments: --epochs 3", suite=TINY),
    Case("run --tasks rte", r"the following arguments are required: --suite"),
    Case("", r"regbench: the following arguments are required: command"),
    Case("fly", r"argument command: invalid choice: 'fly'"),
    Case(TRAIN + " --batch-size 0", r"Recipe batch_size = 0 is not allowed"),
    Case(TRAIN + " --lr nan", r"Recipe learning_rate = nan is not allowed"),
    Case(TRAIN + " --lr -1e-4", r"Recipe learning_rate = -0\.0001 is not allowed; it must be a "
                                r"number > 0"),
    Case(TRAIN + " --lr 0", r"Recipe learning_rate = 0\.0 is not allowed"),
    Case(TRAIN + " --lr fast", r"argument --lr: invalid float value: 'fast'"),
    Case(TRAIN.replace("32", "0"), r"Recipe max_length = 0 is not allowed"),
    Case(TRAIN.replace("32", "4096"), r"max_length = 4096 is more than model 'minilm' takes"),
    Case(TRAIN + " --epochs -1 --min-steps -1", r"Recipe epochs = -1 is not allowed"),
    Case(TRAIN + " --epochs 0 --min-steps 0", r"epochs and min_steps are both 0"),
    Case(TRAIN + " --seed 1180591620717411303424", r"--seed = 1180591620717411303424 is not "
                                                   r"allowed; .*≤ 2147483647"),
    Case(TRAIN + " --seed -1", r"--seed = -1 is not allowed; it must be an integer ≥ 0"),
    Case(TRAIN + " --seed 2**70", r"argument --seed: invalid int value: '2\*\*70'"),
    Case(TRAIN.replace("8", "0"), r"--n-train = 0 is not allowed; it must be an integer ≥ 1"),
    Case(TRAIN.replace("8", "-5"), r"--n-train = -5 is not allowed"),
    Case(TRAIN + " --data-seed -1", r"--data-seed = -1 is not allowed"),
    Case(TRAIN + " --device tpu", r"Unknown device 'tpu'"),
    Case(TRAIN.replace("rte", "nope"), r"Unknown task 'nope'"),
    Case(TRAIN + " --regularizer nope", r"Unknown regularizer 'nope'"),
    Case(TRAIN + " --regularizer lnsr --param sigma=-1",
         r"Regularizer 'lnsr': sigma = -1 is not allowed; it must be a number ≥ 0"),
    Case(TRAIN + " --regularizer weight_decay --param weight_decay=-5",
         r"weight_decay = -5 is not allowed"),
    Case(TRAIN + " --regularizer smart --param teacher=maybe",
         r"teacher = 'maybe' is not allowed; it must be true or false"),
    Case(TRAIN + " --regularizer mixout --param p=1.5", r"p = 1\.5 is not allowed"),
    Case(TRAIN + " --regularizer l2sp --param alpha=abc", r"alpha = 'abc' is not allowed"),
    Case(TRAIN + " --regularizer lnsr --param inject_layer=6",
         r"inject_layer = 6 is not allowed; it must be an integer ≥ 0 and ≤ 5"),
    Case(TRAIN + " --regularizer l2sp --param gamma=1", r"'l2sp' has no parameter gamma"),
    Case(TRAIN + " --param sigma", r"--param 'sigma' is not of the form name=value"),
    Case(TRAIN + " --param =3", r"--param '=3' is not of the form name=value"),
    Case(TRAIN + " --model {tmp}/no-model", r"Could not load model '.*/no-model'"),
    # -- data ----------------------------------------------------------------------------------
    Case("train --task rte --data-dir {tmp}/nowhere", r"No GLUE data for task 'rte': looked for "
                                                      r".*nowhere/RTE/train\.tsv"),
    data(r"No GLUE data for task 'rte'", MRPC_train=GOOD_RTE),
    data(r"No GLUE data for task 'rte': looked for \S*RTE/dev\.tsv\.", RTE_train=GOOD_RTE),
    data(r"RTE/train\.tsv has no example\. Download the task again", RTE_train=RTE_HEADER,
         RTE_dev=GOOD_RTE),
    data(r"RTE/dev\.tsv has 0 examples, too few to split", RTE_train=GOOD_RTE, RTE_dev=RTE_HEADER),
    data(r"RTE/dev\.tsv has 2 examples, too few to split into two halves stratified by label: "
         r"it needs at least two of each and 4 in all", RTE_train=GOOD_RTE,
         RTE_dev=rte("entailment", "not_entailment")),
    data(r"RTE/train\.tsv has no example of label 'not_entailment'",
         RTE_train=rte("entailment", "entailment"), RTE_dev=GOOD_RTE),
    data(r"RTE/train\.tsv is empty", RTE_train="", RTE_dev=GOOD_RTE),
    data(r"RTE/train\.tsv is not UTF-8 text \(byte \d+\)",
         RTE_train=GOOD_RTE.encode() + "caf\xe9\n".encode("latin-1"), RTE_dev=GOOD_RTE),
    data(r"RTE/train\.tsv, line 3: expected 4 tab-separated fields, found 3",
         RTE_train=RTE_HEADER + "0\ta\tb\tentailment\n1\ta\tb\n", RTE_dev=GOOD_RTE),
    data(r"RTE/dev\.tsv, line 2: label 'maybe' is not one of", RTE_train=GOOD_RTE,
         RTE_dev=rte("maybe", "entailment")),
    data(r"RTE/train\.tsv is not a tab-separated GLUE file \(field larger than field limit",
         RTE_train=GOOD_RTE + "9\t" + "x" * 200_000 + "\ty\tentailment\n", RTE_dev=GOOD_RTE),
    data(r"STS-B/train\.tsv, line 2: label 'high' is not one of a number", task="stsb",
         **{"STS-B_train": "\t".join(["c"] * 10) + "\n" + "\t".join(["0"] * 7 + ["a", "b", "high"])
            + "\n", "STS-B_dev": "\t".join(["c"] * 10) + "\n"}),
    Case(RUN.replace("{glue}", "{tmp}/nowhere"), r"No GLUE data for task 'rte'", suite=TINY),
    # -- the feature cache -----------------------------------------------------------------------
    Case(TRAIN, r"Cannot write the feature cache in .*cache-file/features .*Point REGBENCH_CACHE "
                r"at a writable folder", files={"cache-file": "not a folder"},
         env={"REGBENCH_CACHE": "{tmp}/cache-file"}),
    # -- storage -----------------------------------------------------------------------------
    Case(RUN.replace("sqlite:///{tmp}/new.db", "notaurl"),
         r"Storage 'notaurl' is not a database URL; write a file as sqlite:///notaurl", suite=TINY),
    Case(RUN.replace("sqlite:///{tmp}/new.db", "foo://x/y"),
         r"Storage foo://x/y: no database kind 'foo'", suite=TINY),
    Case(RUN.replace("sqlite:///{tmp}/new.db", "mysql+pymysql://user:secret@localhost/db"),
         r"Storage mysql\+pymysql://user:\*\*\*@localhost/db needs the Python driver 'pymysql', "
         r"which is not installed: pip install -e '\.\[mysql\]'", suite=TINY),
    Case(RUN.replace("sqlite:///{tmp}/new.db", "postgresql+psycopg2://u@localhost/db"),
         r"needs the Python driver 'psycopg2'.*pip install -e '\.\[postgres\]'", suite=TINY),
    Case(RUN.replace("sqlite:///{tmp}/new.db", "postgresql://u:secret@127.0.0.1:1/db"),
         r"Could not use the database at postgresql://u:\*\*\*@127\.0\.0\.1:1/db: .*refused",
         suite=TINY),
    Case(RUN.replace("sqlite:///{tmp}/new.db", "''"), r"--storage is empty", suite=TINY),
    Case(RUN.replace("sqlite:///{tmp}/new.db", "sqlite://"), r"a database in memory, which keeps "
                                                             r"nothing", suite=TINY),
    Case(RUN.replace("{tmp}/new.db", "{tmp}/nodir/new.db"),
         r"the folder .*nodir does not exist; create it", suite=TINY),
    Case(RUN.replace("{tmp}/new.db", "{tmp}"), r"is a folder, not a file; name a database file",
         suite=TINY),
    Case(RUN.replace("new.db", "empty.db"), r"empty\.db is an empty file \(0 bytes\), not a "
                                            r"regbench store", suite=TINY, files={"empty.db": ""}),
    Case(RUN.replace("new.db", "notes.db"), r"notes\.db: it is not a SQLite database",
         suite=TINY, files={"notes.db": "remember the milk\n" * 20}),
    Case(RUN.replace("new.db", "truncated.db"), r"truncated\.db: it is damaged \(database disk "
                                                r"image is malformed\); restore it from a copy",
         suite=TINY, files={"truncated.db": "TRUNCATED"}),
    Case(RUN.replace("new.db", "other.db"), r"other\.db holds another program's tables "
                                            r"\(accounts\), none of regbench's", suite=TINY,
         files={"other.db": "FOREIGN"}),
    Case("results --suite quickstart", NO_STORE + r"\. Run the suite first"),
    Case("results --suite quickstart --storage sqlite:///{tmp}/none.db", NO_STORE),
    Case("results --suite quickstart --storage sqlite:///{tmp}/none.db --csv {tmp}/out.csv",
         NO_STORE),
    Case("leaderboard --suite quickstart --out {tmp}/board", NO_STORE),
    Case("leaderboard --suite quickstart --storage ''", r"--storage is empty"),
    Case("results --suite quickstart --storage sqlite:///{tmp}/empty.db", r"an empty file",
         files={"empty.db": ""}),
    Case("results --suite quickstart --storage sqlite:///{tmp}/t.db", r"it is damaged",
         files={"t.db": "TRUNCATED"}),
    Case("results --suite quickstart --storage sqlite:///{tmp}/n.db", r"not a SQLite database",
         files={"n.db": "text\n"}),
    Case("results --suite quickstart --storage sqlite:///{tmp}/o.db",
         r"another program's tables \(accounts\)", files={"o.db": "FOREIGN"}),
    Case("results --suite quickstart --storage sqlite:///{tmp}/bare.db", r"holds no tables, none "
                                                                         r"of regbench's",
         files={"bare.db": "NO TABLES"}),
    Case("leaderboard --suite quickstart --storage postgresql://u@127.0.0.1:1/db",
         r"Could not use the database at postgresql://u@127\.0\.0\.1:1/db"),
    Case("results --suite quickstart --storage notaurl", r"is not a database URL"),
]
LAUGHS = "".join(f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n"
                 for a, b in zip("abcde", "bcdef", strict=True))
STSB_HEADER = "\t".join(["c"] * 10) + "\n"


def stsb(*scores: str) -> str:
    return STSB_HEADER + "".join("\t".join(["0"] * 7 + ["A man sleeps.", "A man rests.", score])
                                 + "\n" for score in scores)


GOOD_STSB = stsb(*[str(i % 6) for i in range(24)])
CSV = "results --suite quickstart --storage sqlite:///{tmp}/store.db --csv "
BOARD = "leaderboard --suite quickstart --storage sqlite:///{tmp}/store.db --out "
# The second round: classes of input that were lost, hung, reinterpreted or called a bug.
CASES += [
    # -- YAML read as meant, and bounded -------------------------------------------------------
    bad_suite(r"aliases expand to more than 10000 values", "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
              + LAUGHS + "tasks: *f\n"),
    bad_suite(r"nests collections deeper than 32 levels", suite(tasks="[" * 60 + "]" * 60)),
    bad_suite(r"an alias refers to the collection that holds it", suite(tasks="&t [*t]")),
    bad_suite(r"032 has a leading zero, which YAML 1\.1 reads as an octal number",
              suite(sizes="[032]")),
    bad_suite(r"found unhashable key", suite(regularizers="{[vanilla]: {}}")),
    bad_suite(r"teacher = 'yes' is not allowed; it must be true or false",
              suite(regularizers="{smart: {teacher: yes}}")),
    bad_suite(r"Recipe learning_rate = 2 is not allowed; .*≤ 1", recipe(learning_rate="2")),
    # -- every value's type checked, no fall-back to the defaults --------------------------------
    bad_suite(r"key 'tuning' must be a mapping of tuning keys, not False", suite(tuning="false")),
    bad_suite(r"key 'tuning' must be a mapping of tuning keys, not \[\]", suite(tuning="[]")),
    bad_suite(r"key 'recipe' must be a mapping of recipe keys, not 0", suite(recipe="0")),
    bad_suite(r"key 'recipe' must be a mapping of recipe keys, not None", suite(recipe="")),
    bad_suite(r"key 1 is not a suite key", TINY + "1: x\n"),
    bad_suite(r"tasks must be a non-empty list of task names; got \[1\]", suite(tasks="[1]")),
    bad_suite(r"the options of regularizer 'l2sp' must be a mapping name -> value",
              suite(regularizers="{l2sp: {1: 2}}")),
    bad_suite(r"name '\.hidden' must be a name of 1 to 100", TINY + "name: .hidden\n"),
    bad_suite(r"layer_weights = \['a'\] is not allowed; it must be a list, each a number ≥ 0",
              suite(regularizers="{lnsr: {layer_weights: [a]}}")),
    # -- an upper bound on every number ---------------------------------------------------------
    bad_suite(r"Regularizer 'smart': K = 1000000000 is not allowed; .*≤ 100",
              suite(regularizers="{smart: {K: 1000000000}}")),
    bad_suite(r"Regularizer 'lnsr': samples = 100000 is not allowed",
              suite(regularizers="{lnsr: {samples: 100000}}")),
    bad_suite(r"Recipe epochs = 100000000000000000000 is not allowed; .*≤ 1000",
              recipe(epochs="100000000000000000000")),
    bad_suite(r"Recipe min_steps = 1000000000 is not allowed", recipe(min_steps="1000000000")),
    bad_suite(r"tuning trials = 1000000 is not allowed; .*≤ 10000",
              suite(tuning="{trials: 1000000}")),
    Case(RUN + " --trials 1000000", r"tuning trials = 1000000 is not allowed", suite=TINY),
    Case(RUN + " --heartbeat-timeout 1e300", r"--heartbeat-timeout = 1e\+300 is not allowed; "
                                             r".*≤ 604800", suite=TINY),
    Case(TRAIN + " --epochs 100000000000000000000", r"Recipe epochs = 100000000000000000000"),
    Case(TRAIN + " --regularizer smart --param K=1000000000", r"K = 1000000000 is not allowed"),
    Case(TRAIN + " --regularizer lnsr --param sigma=032", r"--param sigma is not valid YAML: 032 "
                                                          r"has a leading zero"),
    # -- a size larger than the data -------------------------------------------------------------
    bad_suite(r"A training size of 100000 is more than the 2490 examples of rte's training split",
              suite(sizes="[16, 100000]")),
    Case(TRAIN.replace("8", "3000"), r"A training size of 3000 is more than the 2490 examples"),
    # -- a flag given twice ----------------------------------------------------------------------
    Case(RUN + " --trials 1 --trials 2", r"argument --trials: given twice; give it once",
         suite=TINY),
    Case(RUN + " --dry-run --dry-run", r"argument --dry-run: given twice", suite=TINY),
    Case(TRAIN + " --regularizer lnsr --param sigma=0.1 --param sigma=0.2",
         r"--param sigma is given twice \('0\.1' and '0\.2'\)"),
    # -- the suite's name and file ---------------------------------------------------------------
    Case("run --suite {tmp}/pipe.yaml", r"Suite file .*pipe\.yaml is a FIFO \(named pipe\), not a "
                                        r"file", files={"pipe.yaml": "<fifo>"}),
    Case("run --suite {tmp}/loop.yaml", r"Suite file .*loop\.yaml is a symbolic link loop",
         files={"loop.yaml": "<loop>"}),
    Case("run --suite quickstart --sizes 0", r"--sizes\[0\] = 0 is not allowed",
         files={"quickstart/suite.yaml": TINY}),  # the built-in, not the folder
    # -- the environment -------------------------------------------------------------------------
    Case(RUN + " --sizes 0", r"--sizes\[0\] = 0 is not allowed", suite=TINY,
         env={"REGBENCH_DEBUG": "false"}),  # and no traceback
    Case(RUN, r"REGBENCH_DEBUG='maybe' is neither true .* nor false", suite=TINY,
         env={"REGBENCH_DEBUG": "maybe"}),
    # -- data ------------------------------------------------------------------------------------
    data(r"RTE/train\.tsv, line 1: 3 tab-separated fields, fewer than the 4 that task 'rte' "
         r"reads", RTE_train="index\tsentence1\tsentence2\n0\ta\tb\n", RTE_dev=GOOD_RTE),
    data(r"RTE/train\.tsv is a FIFO \(named pipe\), not a file", RTE_train="<fifo>",
         RTE_dev=GOOD_RTE),
    data(r"STS-B/train\.tsv, line 3: label 'nan' is not one of a number from 0 to 5",
         task="stsb", **{"STS-B_train": stsb("1.0", "nan"), "STS-B_dev": GOOD_STSB}),
    data(r"STS-B/train\.tsv, line 2: label 'inf' is not one of a number from 0 to 5",
         task="stsb", **{"STS-B_train": stsb("inf"), "STS-B_dev": GOOD_STSB}),
    data(r"STS-B/dev\.tsv, line 4: label '5\.5' is not one of a number from 0 to 5",
         task="stsb", **{"STS-B_train": GOOD_STSB, "STS-B_dev": stsb("1", "2", "5.5")}),
    # -- storage: nothing in memory, every URL and path problem named ------------------------------
    Case(RUN.replace("sqlite:///{tmp}/new.db", "sqlite:///"), r"a database in memory", suite=TINY),
    Case(RUN.replace("sqlite:///{tmp}/new.db", "'sqlite:///file:m?mode=memory&uri=true'"),
         r"a database in memory", suite=TINY),
    Case(RUN.replace("sqlite:///{tmp}/new.db", "sqlite:///:memory:?cache=shared") + " --dry-run",
         r"a database in memory", suite=TINY),
    Case(RUN.replace("sqlite:///{tmp}/new.db", "postgresql://u@host:port/db"),
         r"Storage 'postgresql://u@host:port/db' is not a database URL", suite=TINY),
    Case(RUN.replace("new.db", "new.db?timeout=soon"), r"is not a database URL \(could not "
                                                       r"convert", suite=TINY),
    Case(RUN.replace("new.db", "pipe.db"), r"pipe\.db is a FIFO \(named pipe\), not a file",
         suite=TINY, files={"pipe.db": "<fifo>"}),
    Case(RUN.replace("new.db", "loop.db"), r"loop\.db is a symbolic link loop", suite=TINY,
         files={"loop.db": "<loop>"}),
    Case(RUN.replace("new.db", "file/new.db"), r"file/new\.db has a part that is not a folder",
         suite=TINY, files={"file": "a file"}),
    Case(RUN.replace("new.db", "runs.db"), r"holds a table 'regbench_runs' \(without its columns "
                                           r"key, .*another program's", suite=TINY,
         files={"runs.db": "FOREIGN RUNS"}),
    Case(RUN.replace("new.db", "s.db"), r"holds a table 'studies' \(without its columns study_id, "
                                        r"study_name\)", suite=TINY,
         files={"s.db": "FOREIGN STUDIES"}),
    Case(RUN.replace("new.db", "o.db") + " --dry-run", r"another program's tables \(accounts\)",
         suite=TINY, files={"o.db": "FOREIGN"}),  # as `run` would refuse it
    # -- outputs: never over the store, nor over another file unasked --------------------------
    Case(CSV + "{tmp}/store.db", r"store\.db is the run store itself", files={"store.db": "STORE"}),
    Case(CSV + "{tmp}/store.db --force", r"is the run store itself", files={"store.db": "STORE"}),
    Case(CSV + "{tmp}/notes.txt", r"notes\.txt exists and is not an earlier output of this "
                                  r"command; .*--force", files={"store.db": "STORE",
                                                               "notes.txt": "mine\n"}),
    Case(CSV + "{tmp}", r"Cannot write .*: it is a folder, not a file",
         files={"store.db": "STORE"}),
    Case(CSV + "/dev/full", r"Cannot write /dev/full: it is a device, not a file",
         files={"store.db": "STORE"}),
    Case(CSV + "{tmp}/store.db/x.csv", r"store\.db/x\.csv: it has a part that is not a folder",
         files={"store.db": "STORE"}),
    Case(BOARD + "{tmp}/board", r"No run of suite quickstart .* no board to publish",
         files={"store.db": "STORE"}),
]

if not torch.cuda.is_available():
    CASES.append(Case(RUN + " --device cuda", r"Device 'cuda' asked for, but this machine has "
                                              r"none", suite=TINY))


@pytest.fixture(scope="module")
def databases(tmp_path_factory) -> dict[str, bytes]:
    """The bytes of databases no store should accept: a truncated copy of a real store, another
    program's database, a SQLite file with no tables."""
    folder = tmp_path_factory.mktemp("databases")
    store = Store(f"sqlite:///{folder / 'real.db'}")
    for i in range(300):
        store.put({"key": f"k{i}", "suite": "s", "phase": "final", "regularizer": "vanilla",
                   "regularizer_version": "1", "params": {"pad": "x" * 200}, "task": "rte",
                   "n_train": 16, "data_seed": 0, "seed": i, "model": "minilm", "recipe": {},
                   "status": "finished"})
    store.engine.dispose()
    real = (folder / "real.db").read_bytes()
    with sqlite3.connect(folder / "other.db") as connection:
        connection.execute("create table accounts (id integer primary key, owner text)")
    with sqlite3.connect(folder / "bare.db") as connection:
        connection.execute("pragma user_version = 7")  # a database file, and nothing in it
    with sqlite3.connect(folder / "runs.db") as connection:
        connection.execute("create table regbench_runs (id integer primary key, note text)")
    shutil.copy(folder / "real.db", folder / "studies.db")
    with sqlite3.connect(folder / "studies.db") as connection:
        connection.execute("create table studies (id integer primary key, title text)")
    return {"TRUNCATED": real[:len(real) // 2], "FOREIGN": (folder / "other.db").read_bytes(),
            "NO TABLES": (folder / "bare.db").read_bytes(), "STORE": real,
            "FOREIGN RUNS": (folder / "runs.db").read_bytes(),
            "FOREIGN STUDIES": (folder / "studies.db").read_bytes()}


def _fill(text: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        text = text.replace(f"{{{name}}}", value)
    return text


def _snapshot(folder):
    return {p: (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_bad_input_is_one_clear_line(case, tmp_path, glue_dir, databases, monkeypatch, capsys):
    fill = {"tmp": str(tmp_path), "glue": str(glue_dir), "suite": str(tmp_path / "suite.yaml")}
    if case.suite is not None:
        (tmp_path / "suite.yaml").write_text(_fill(case.suite, fill))
    for name, content in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == "<fifo>":
            os.mkfifo(path)
        elif content == "<loop>":
            path.symlink_to(path.name)
        else:
            content = databases.get(content, content)
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for name, value in case.env.items():
        monkeypatch.setenv(name, _fill(value, fill))
    features._cached_task_data.cache_clear()  # a case's cache or data must be read afresh
    features._cached_features.cache_clear()
    monkeypatch.chdir(tmp_path)  # where the default store would be made
    before = _snapshot(tmp_path)

    code = main([_fill(word, fill) for word in shlex.split(case.argv)])

    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert code == case.code, err
    assert last.startswith("regbench: error: "), err
    assert re.search(case.message, last), last
    assert _snapshot(tmp_path) == before, "the command left something behind"


# -- end to end, in a process of its own ---------------------------------------------------------

def _regbench(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "regbench.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["train", "--task", "rte", "--lr", "-1e-4"], r"learning_rate = -0\.0001 is not allowed"),
    (["results", "--suite", "quickstart"], NO_STORE),
    (["run", "--suite", "quickstart", "--sizes", "0"], r"--sizes\[0\] = 0 is not allowed"),
    (["run", "--suite", "quickstart", "--storage", "notaurl"], r"is not a database URL"),
])
def test_a_bad_input_exits_2_without_traceback(args, message, tmp_path):
    done = _regbench(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert re.fullmatch(rf"regbench: error: .*{message}.*\n", done.stderr), done.stderr
    assert not any(tmp_path.iterdir())


BUGGY = """
from regbench.plugin import Regularizer

class Plugin(Regularizer):
    name = "buggy"

    def loss(self, model, batch, outputs, task_loss):
        return task_loss + {}["missing"]
"""


def test_a_bug_is_one_line_naming_the_plugin_and_debug_shows_the_traceback(
        tmp_path, glue_dir, dist_info):
    (tmp_path / "regbench_buggy.py").write_text(BUGGY)
    dist_info(tmp_path, "regbench-buggy", {"buggy": "regbench_buggy:Plugin"})
    args = ["train", "--task", "rte", "--regularizer", "buggy", "--n-train", "8", "--epochs", "0",
            "--min-steps", "1", "--max-length", "32", "--data-dir", str(glue_dir)]
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = _regbench(*args, env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert re.search(r"regbench: internal error, a bug in regularizer 'buggy' \(module "
                     r"regbench_buggy\), or in regbench: KeyError: 'missing'\. Run again with "
                     r"--debug \(or REGBENCH_DEBUG=1\)", done.stderr.splitlines()[-1])
    debugged = _regbench(*args, "--debug", env=env)
    assert debugged.returncode == 1 and "Traceback" in debugged.stderr
    assert "KeyError: 'missing'" in debugged.stderr


def test_epochs_below_the_default_minimum_of_steps_say_so(caplog):
    caplog.set_level(logging.WARNING, logger="regbench")
    given = SimpleNamespace(epochs=1, min_steps=None)  # `regbench train --epochs 1`
    _warn_below_min_steps(given, Recipe(epochs=1, batch_size=8), 32)
    assert ("--epochs 1 is 4 steps over 32 examples, below the default minimum of 300 steps: "
            "training 300 steps; --min-steps 0 trains the epochs alone.") in caplog.text
    caplog.clear()
    # A minimum the user chose, or epochs beyond the minimum, are no news.
    _warn_below_min_steps(SimpleNamespace(epochs=1, min_steps=300),
                             Recipe(epochs=1, batch_size=8), 32)
    _warn_below_min_steps(SimpleNamespace(epochs=10, min_steps=None), Recipe(epochs=10), 1000)
    assert caplog.text == ""


# -- what the table cannot show -------------------------------------------------------------------

def test_yaml_is_read_as_yaml_1_2_with_merge_keys():
    text = ("rates: &rates {epochs: 1, learning_rate: 2e-5}\nrecipe: {<<: *rates, epochs: 2}\n"
            "words: [yes, no, on, off, 1_000, 1:30, 2024-01-01]\nflags: [true, FALSE]\n"
            "numbers: [0x1F, 0o17, -.5, .inf, 7]\n")
    values = strict_yaml.load(text, "t")
    assert values["recipe"] == {"epochs": 2, "learning_rate": 2e-5}
    assert values["words"] == ["yes", "no", "on", "off", "1_000", "1:30", "2024-01-01"]
    assert values["flags"] == [True, False]
    assert values["numbers"] == [31, 15, -0.5, float("inf"), 7]
    assert parse_params(["alpha=2e-5", "decoupled=true", "noise=off"]) == {
        "alpha": 2e-5, "decoupled": True, "noise": "off"}


def test_a_damaged_feature_cache_entry_is_made_again(tmp_path, monkeypatch):
    monkeypatch.setenv(features.CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "RTE").mkdir()
    for name in ("train", "dev"):
        (tmp_path / "RTE" / f"{name}.tsv").write_text(GOOD_RTE)
    task, tokenizer = get_task("rte"), load_tokenizer("minilm")

    def loaded() -> dict:
        cached = features.load_features(task, tokenizer, 16, tmp_path)
        return {split: (list(cached[split]["input_ids"]), list(cached[split]["label"]))
                for split in cached}

    whole = loaded()
    damages = [lambda entry: (lambda arrow: arrow.write_bytes(arrow.read_bytes()[:100]))(
                   next(entry.rglob("*.arrow"))),  # cut short
               lambda entry: next(entry.rglob("state.json")).write_text("{"),  # edited
               lambda entry: shutil.rmtree(entry / "train"),  # a split gone
               lambda entry: (shutil.rmtree(entry), entry.write_text("x"))]  # not a folder
    for damage in damages:
        [entry] = (tmp_path / "cache" / "features").iterdir()
        damage(entry)
        assert loaded() == whole


class _Poisoned(Regularizer):
    """Leaves every weight non-finite after the last step, the loss of every step finite."""

    name = "poisoned"

    def after_step(self, model):
        if self.state.step == self.state.total_steps:
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.fill_(float("nan"))


def test_non_finite_weights_end_a_run_as_diverged_and_json_stays_strict(rte_data, tiny_recipe):
    result = fine_tune(rte_data, _Poisoned(), seed=1, recipe=tiny_recipe, progress=False)
    assert result.status == "diverged" and not result.test
    assert re.fullmatch(r"weights became non-finite by step 4 of 4", result.error)
    printed = strict_json({"score": float("nan"), "runs": [1.0, float("-inf")]})
    assert printed == '{"score": null, "runs": [1.0, null]}'


def _board_store(tmp_path, seeds: int, copies: int = 1) -> str:
    """A store of the quickstart suite's vanilla runs on STS-B at N = 64, `seeds` of its seeds
    (`copies` of each, under other keys, for a long listing)."""
    url = f"sqlite:///{tmp_path / f'{seeds}-{copies}.db'}"
    store, quickstart = Store(url), load_suite("quickstart")
    rows = [{"key": f"k{seed}-{copy}", "suite": "quickstart", "phase": "final",
             "regularizer": "vanilla", "regularizer_version": "1", "params": {}, "task": "stsb",
             "n_train": 64, "data_seed": quickstart.data_seed, "seed": seed,
             "model": quickstart.model, "recipe": quickstart.recipe.as_dict(),
             "status": "finished", "test_score": 0.1 * seed, "seconds": 1.0, "provenance": {}}
            for seed in quickstart.final_seeds[:seeds] for copy in range(copies)]
    with store.engine.begin() as connection:
        connection.execute(sa.insert(runs), rows)
    store.engine.dispose()
    return url


def test_output_to_a_closed_pipe_is_not_an_error(tmp_path):
    url = _board_store(tmp_path, 5, copies=400)  # a listing larger than a pipe holds
    done = subprocess.run(f"{shlex.quote(sys.executable)} -m regbench.cli results --suite "
                          f"quickstart --storage {url} | head -1", shell=True, text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith("PARTIAL")


def test_concurrent_publishes_never_shrink_a_board_nor_does_a_deleted_json(
        tmp_path, glue_dir, monkeypatch):
    read, delays = leaderboard._published, {5: 0.5, 2: 1.0}

    def slow_reader(out_dir, name, force):  # without the lock, both would read an empty folder
        found = read(out_dir, name, force)
        time.sleep(delays[threading.current_thread().seeds])
        return found

    monkeypatch.setattr(leaderboard, "_published", slow_reader)
    out, quickstart = tmp_path / "board", load_suite("quickstart")
    frames = {seeds: leaderboard.add_test_references(
        Store(_board_store(tmp_path, seeds), create=False).frame(), ["stsb"], str(glue_dir))[0]
        for seeds in delays}

    def publish(seeds: int) -> None:
        threading.current_thread().seeds = seeds
        with contextlib.suppress(RegbenchError):  # the smaller, once the larger is there
            leaderboard.publish_suite(quickstart, frames[seeds], out)

    threads = [threading.Thread(target=publish, args=(seeds,)) for seeds in delays]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    monkeypatch.undo()
    assert leaderboard._published(out, "quickstart", False)[0] == 5
    (out / "quickstart.json").unlink()  # the guard still reads the board's CSV
    assert leaderboard._published(out, "quickstart", False)[0] == 5
