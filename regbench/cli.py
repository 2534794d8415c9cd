"""The `regbench` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import yaml
from tabulate import tabulate

from regbench.errors import RegbenchError

log = logging.getLogger("regbench")


def parse_params(pairs: list[str]) -> dict:
    """`--param k=v` pairs; values are read as YAML, so numbers and booleans keep their type."""
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise RegbenchError(f"--param {pair!r} is not of the form name=value.")
        params[key.strip()] = yaml.safe_load(value)
    return params


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="a local glue_data folder (default: $REGBENCH_GLUE_DIR, "
                        "else the Hugging Face hub)")


def cmd_tasks(args) -> None:
    from regbench.data import describe_source
    from regbench.tasks import TASKS

    rows = [[t.name, ", ".join(t.text_columns), ", ".join(t.label_names) or "score 0-5",
             t.metric, ", ".join(t.extra_metrics), describe_source(t, args.data_dir)]
            for t in TASKS.values()]
    print(tabulate(rows, headers=["task", "text", "labels", "metric", "also", "data from"]))


def cmd_train(args) -> None:
    from regbench.features import task_data
    from regbench.harness import Recipe, fine_tune, pick_device
    from regbench.plugins import build
    from regbench.tasks import get_task

    task = get_task(args.task)
    regularizer = build(args.regularizer, parse_params(args.param))
    recipe = Recipe.from_dict({k: v for k, v in {
        "epochs": args.epochs, "min_steps": args.min_steps, "batch_size": args.batch_size,
        "learning_rate": args.lr, "max_length": args.max_length}.items() if v is not None})
    device = pick_device(args.device)
    data = task_data(task, args.n_train, args.data_seed, args.model, recipe.max_length,
                     args.data_dir)
    log.info("training %s on %s: %d examples, %d steps, %s", regularizer.name, task.name,
             len(data.train), recipe.total_steps(len(data.train)), device)
    result = fine_tune(data, regularizer, args.seed, args.model, recipe, device,
                       progress=not args.json)
    if args.json:
        print(json.dumps({"task": task.name, "regularizer": regularizer.name,
                          "params": regularizer.params, "n_train": len(data.train),
                          "seed": args.seed, "status": result.status, "error": result.error,
                          "steps": result.steps, "seconds": round(result.seconds, 2),
                          "validation": result.validation, "test": result.test}, indent=2))
        return
    if result.status != "finished":
        print(f"run {result.status}: {result.error}")
    metrics = sorted({*result.validation, *result.test})
    print(tabulate([[split, *(values.get(m) for m in metrics)]
                    for split, values in (("validation", result.validation),
                                          ("test", result.test))],
                   headers=["split", *metrics], floatfmt=".4f"))
    print(f"{result.steps} steps in {result.seconds:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="regbench", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    tasks = commands.add_parser("tasks", help="list the GLUE tasks and where their data comes from")
    _add_data_options(tasks)
    tasks.set_defaults(run=cmd_tasks)

    train = commands.add_parser("train", help="fine-tune one configuration and print its metrics")
    train.add_argument("--task", required=True)
    train.add_argument("--n-train", type=int, default=1000, help="training examples (stratified)")
    train.add_argument("--seed", type=int, default=1, help="training seed: head, order, dropout")
    train.add_argument("--data-seed", type=int, default=0, help="seed of the training subset")
    train.add_argument("--regularizer", default="vanilla")
    train.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                       help="a regularizer hyperparameter or option; repeatable")
    train.add_argument("--model", default="minilm",
                       help="'minilm' (embedded, offline), a Hugging Face model id or a path")
    train.add_argument("--epochs", type=int)
    train.add_argument("--min-steps", type=int, help="train at least this many steps")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--max-length", type=int)
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    train.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _add_data_options(train)
    train.set_defaults(run=cmd_train)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    if not args.verbose:
        import transformers

        # Their load reports and progress bars repeat on every run; regbench logs its own.
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    try:
        args.run(args)
    except RegbenchError as err:
        print(f"regbench: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
