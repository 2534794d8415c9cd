"""The `regbench` command."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
import traceback
from pathlib import Path

from tabulate import tabulate

from regbench import strict_yaml
from regbench.errors import RegbenchError

log = logging.getLogger("regbench")


def parse_params(pairs: list[str]) -> dict:
    """`--param k=v` pairs; values are read as a suite's YAML is, so numbers and booleans keep
    their type. A name given twice is an error, not the last one kept."""
    given = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RegbenchError(f"--param {pair!r} is not of the form name=value.")
        if key in given:
            raise RegbenchError(f"--param {key} is given twice ({given[key]!r} and {value!r}); "
                                "give each parameter once.")
        given[key] = value
    return {key: strict_yaml.load(value, f"--param {key}") for key, value in given.items()}


_GIVEN = "_flags_given"  # the namespace attribute where `_once` notes the flags seen


def _once(action: type[argparse.Action]) -> type[argparse.Action]:
    """`action`, refusing its flag's second appearance: argparse would keep the last silently."""

    class Once(action):
        def __call__(self, parser, namespace, values, option_string=None):
            given = namespace.__dict__.setdefault(_GIVEN, set())
            if self.dest in given:
                parser.error(f"argument {'/'.join(self.option_strings)}: given twice; give it "
                             "once")
            given.add(self.dest)
            super().__call__(parser, namespace, values, option_string)

    return Once


class _Parser(argparse.ArgumentParser):
    """argparse's parser, its mistakes reported as regbench's: one line, exit code 2; a flag given
    twice is one of them (`--param`, a documented list, apart)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in (None, "store", "store_true"):
            self.register("action", name, _once(self._registry_get("action", name)))

    def error(self, message: str):
        raise RegbenchError(f"{self.prog}: {message} (see {self.prog} --help).")


def _numbers_as_values(argv: list[str]) -> list[str]:
    """`--lr -1e-4` as `--lr=-1e-4`: argparse takes a word that starts with '-' for an option
    unless it is a plain negative integer or decimal, so a value in any other notation would be
    refused before regbench could say what is wrong with it."""
    joined: list[str] = []
    for word in argv:
        previous = joined[-1] if joined else ""
        if (word.startswith("-") and previous.startswith("--") and "=" not in previous
                and all(_number(part) for part in word.split(","))):
            joined[-1] = f"{previous}={word}"
        else:
            joined.append(word)
    return joined


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers") from None


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
    from regbench.harness import fine_tune, pick_device
    from regbench.jsonout import strict_json
    from regbench.modeling import check_max_length, model_depth
    from regbench.plugins import build
    from regbench.recipe import Recipe
    from regbench.suite import SEED, SIZE
    from regbench.tasks import get_task

    task = get_task(args.task)
    regularizer = build(args.regularizer, parse_params(args.param), model_depth(args.model))
    recipe = Recipe.from_dict({k: v for k, v in {
        "epochs": args.epochs, "min_steps": args.min_steps, "batch_size": args.batch_size,
        "learning_rate": args.lr, "max_length": args.max_length,
        "pooling": args.pooling}.items() if v is not None})
    check_max_length(args.model, recipe.max_length)
    SIZE.validate(args.n_train, "--n-train")
    SEED.validate(args.seed, "--seed")
    SEED.validate(args.data_seed, "--data-seed")
    device = pick_device(args.device)
    data = task_data(task, args.n_train, args.data_seed, args.model, recipe.max_length,
                     args.data_dir)
    _warn_below_min_steps(args, recipe, len(data.train))
    log.info("training %s on %s: %d examples, %d steps, %s", regularizer.name, task.name,
             len(data.train), recipe.total_steps(len(data.train)), device)
    result = fine_tune(data, regularizer, args.seed, args.model, recipe, device,
                       progress=not args.json)
    if args.json:
        print(strict_json({"task": task.name, "regularizer": regularizer.name,
                           "params": regularizer.params, "n_train": len(data.train),
                           "seed": args.seed, "status": result.status, "error": result.error,
                           "steps": result.steps, "seconds": round(result.seconds, 2),
                           "validation": result.validation, "test": result.test,
                           "noise_stability": result.noise_stability}, indent=2))
        return
    if result.status != "finished":
        print(f"run {result.status}: {result.error}")
    metrics = sorted({*result.validation, *result.test})
    print(tabulate([[split, *(values.get(m) for m in metrics)]
                    for split, values in (("validation", result.validation),
                                          ("test", result.test))],
                   headers=["split", *metrics], floatfmt=".4f"))
    if result.noise_stability is not None:
        print(f"noise stability: the last layer moves {result.noise_stability['summary']:.3f} of "
              "its norm for 5% noise at the embeddings")
    print(f"{result.steps} steps in {result.seconds:.1f} s")


def _warn_below_min_steps(args, recipe, n_train: int) -> None:
    """A warning when --epochs asks for fewer steps than the default minimum the run will take."""
    epoch_steps = recipe.epochs * math.ceil(n_train / recipe.batch_size)
    if args.epochs is not None and args.min_steps is None and epoch_steps < recipe.min_steps:
        log.warning("--epochs %d is %d steps over %d examples, below the default minimum of %d "
                    "steps: training %d steps; --min-steps 0 trains the epochs alone.",
                    recipe.epochs, epoch_steps, n_train, recipe.min_steps, recipe.min_steps)


def _suite_from_args(args):
    from regbench.suite import load_suite, override

    suite = load_suite(args.suite)
    return override(suite, tasks=args.tasks, sizes=args.sizes, final_seeds=args.seeds,
                    regularizers=args.regularizers, trials=args.trials, model=args.model)


def cmd_run(args) -> None:
    from regbench.outputs import make_folder
    from regbench.params import Param
    from regbench.runner import Plan, SuiteRunner, estimate_seconds
    from regbench.store import storage_url

    suite = _suite_from_args(args)
    storage = storage_url(suite.name, args.storage)
    # Up to a week: a worker silent for longer is gone, and a longer wait overflows the clock.
    Param(300.0, gt=0, le=7 * 24 * 3600).validate(args.heartbeat_timeout, "--heartbeat-timeout")
    if args.dry_run:
        from regbench.harness import mixed_precision, pick_device
        from regbench.runner import describe_device
        from regbench.store import planned_store

        plan, device = Plan.of(suite), pick_device(args.device)
        plan.prepare_data(args.data_dir)
        # What `run` would refuse, refused; the default store's folder is made by `run`.
        default_missing = args.storage is None and not os.path.lexists("runs")
        store = None if default_missing else planned_store(storage)
        if store is None:
            log.info("nothing stored yet in %s: every run is still to train", storage)
        left = _left_to_train(plan, store, args.force)
        precision = "bf16 autocast" if mixed_precision(suite.recipe.precision, device) else "fp32"
        log.info("timing a short run of vanilla per task on %s for the estimate", device)
        seconds = estimate_seconds(plan, args.device, args.data_dir)
        rows = [[c.regularizer, c.task, c.size, suite.tuning.trials if c in plan.tuned else 0,
                 plan.tuning_runs(c), len(suite.final_seeds), plan.runs(c) - left[c],
                 seconds[c] * left[c] / 60] for c in plan.cells]
        print(tabulate(rows, headers=["regularizer", "task", "N", "trials", "tuning runs",
                                      "final runs", "done", "minutes"], floatfmt=".1f"))
        total, done = sum(r[-1] for r in rows), sum(r[-2] for r in rows)
        print(f"\n{len(plan.cells)} studies, {plan.total_runs()} runs, {done} of them done: "
              f"about {total:.0f} minutes for the other {plan.total_runs() - done} with one "
              f"worker on {describe_device(device)} in {precision}, without pruning; results in "
              f"{storage}")
        return
    if args.storage is None:
        make_folder(Path("runs"), "The default store's folder")
    tally = SuiteRunner(suite, storage, args.device, args.data_dir, force=args.force,
                        heartbeat_timeout=args.heartbeat_timeout).run()
    print(f"suite {suite.name}: {tally.executed} runs trained, {tally.pruned} pruned partway, "
          f"{tally.cached} already stored, {tally.failed} failed, {tally.saved_by_pruning:.1f} "
          f"runs' training saved by the pruner; results in {storage}")


def _left_to_train(plan, store, force: bool) -> dict:
    """`Plan.left` from the suite's store: every run where there is none yet, or with --force."""
    if store is None or force:
        return {cell: plan.runs(cell) for cell in plan.cells}
    return plan.left(store.frame(plan.suite.name), store.study_names())


def cmd_results(args) -> None:
    from regbench.outputs import check_targets, write_whole
    from regbench.store import Store, sqlite_file, storage_url
    from regbench.suite import load_suite

    suite = load_suite(args.suite)
    storage = storage_url(suite.name, args.storage)
    frame = Store(storage, create=False).frame(suite.name)
    missing = _missing_final_runs(suite, frame)
    if args.phase != "all":
        frame = frame[frame.phase == args.phase]
    if missing:
        partial = (f"PARTIAL: suite {suite.name} is not finished: {missing} of "
                   f"{len(suite.cells()) * len(suite.final_seeds)} final runs have no result yet "
                   "(regbench run resumes it).")
        if args.csv:
            log.warning(partial)
        else:
            print(partial + "\n")
    if args.csv:
        target = Path(args.csv)
        check_targets([target], sqlite_file(storage), _earlier_results_csv, args.force)
        write_whole(target.parent, {target.name: frame.to_csv(index=False).encode()})
        print(f"{len(frame)} runs written to {args.csv}")
        return
    if frame.empty:
        print(f"no {args.phase if args.phase != 'all' else ''} runs of suite {suite.name} in "
              f"{storage}")
        return
    columns = ["phase", "regularizer", "task", "n_train", "seed", "status", "validation_score",
               "test_score", "seconds", "params"]
    frame = frame.sort_values(["task", "n_train", "regularizer", "phase", "seed"])
    print(tabulate(frame[columns].values.tolist(), headers=columns, floatfmt=".4f"))


def _earlier_results_csv(path: Path) -> bool:
    """Whether `path` looks written by `results --csv`: its header starts with the runs table's
    first columns."""
    try:
        with path.open(encoding="utf-8") as file:
            return file.readline().startswith("key,suite,phase,")
    except (OSError, UnicodeDecodeError):
        return False


def _missing_final_runs(suite, frame) -> int:
    """How many of the suite's final runs, as it is set up now, have no settled result."""
    from regbench.store import stored_per_cell

    return sum(len(suite.final_seeds) - seeds
               for _, seeds in stored_per_cell(frame, suite).values())


def cmd_leaderboard(args) -> None:
    from regbench.leaderboard import add_test_references, publish_suite
    from regbench.store import Store, sqlite_file, storage_url
    from regbench.suite import load_suite

    suite = load_suite(args.suite)
    url = storage_url(suite.name, args.storage)
    frame = Store(url, create=False).frame(suite.name)
    # A store from before runs kept their test reference: computed from the data once, and
    # stored, so that the next board needs the store alone.
    frame, computed = add_test_references(frame, list(suite.tasks), args.data_dir)
    if computed:
        try:
            Store(url).set_test_references(computed)
        except RegbenchError as err:
            log.warning("the test references of %s were not added to the store (%s); the next "
                        "board will need the data again", ", ".join(computed), err)
    path = publish_suite(suite, frame, args.out, force=args.force, store=sqlite_file(url))
    print(f"leaderboard written to {path}, from the {len(frame)} runs stored for suite "
          f"{suite.name} (its final runs in the plan are shown)")


def cmd_regularizers(args) -> None:
    from regbench.modeling import model_depth
    from regbench.plugins import distribution_of, loadable

    depth = model_depth(args.model)
    rows = []
    for name, cls in loadable().items():
        space = "; ".join(f"{k}: {_describe(d)}" for k, d in cls.search_space(depth).items())
        plugin = cls()
        passes, singly = plugin.setup_passes(), plugin.setup_example_passes()
        setup = [f"{passes:g} epoch{'s' if passes > 1 else ''}" if passes else "",
                 f"{singly:g} pass{'es' if singly > 1 else ''} per example" if singly else ""]
        rows.append([name, distribution_of(name), cls.version,
                     ", ".join(f"{k}={v}" for k, v in cls.defaults.items()) or "-", space or "-",
                     f"{plugin.step_cost():.2f}x", ", ".join(filter(None, setup)) or "-"])
    print(tabulate(rows, headers=["regularizer", "from", "version", "defaults", "search space",
                                  "step cost", "setup"],
                   maxcolwidths=[None, None, None, 40, 50, None, None]))


def _describe(dist) -> str:
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return "{" + ", ".join(map(str, dist.choices)) + "}"
    return f"{'log-' if dist.log else ''}[{dist.low:g}, {dist.high:g}]"


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _check_debug_variable() -> None:
    value = os.environ.get("REGBENCH_DEBUG", "")
    if value.strip().lower() not in (*_TRUE, *_FALSE):
        raise RegbenchError(f"REGBENCH_DEBUG={value!r} is neither true (1, true, yes, on) nor "
                            "false (0, false, no, off, or unset).")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _culprit(err: BaseException) -> str:
    """Whose bug `err` is: the regularizer whose hook it came through, if any, else regbench's."""
    from regbench.plugin import Regularizer

    frames = [frame for frame, _ in traceback.walk_tb(err.__traceback__)]
    for frame in reversed(frames):
        owner = frame.f_locals.get("self")
        if isinstance(owner, Regularizer):
            return f"regularizer {owner.name!r} (module {type(owner).__module__}), or in regbench"
    return "regbench"


def _add_output_options(parser: argparse.ArgumentParser, default) -> None:
    # On every subcommand too, so that they may come anywhere on the line; SUPPRESS keeps a
    # subcommand's unset flag from overwriting the one given before it.
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="debug logging")
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the traceback of any error (also REGBENCH_DEBUG=1)")


def main(argv: list[str] | None = None) -> int:
    """The command line. Exit codes: 0 done; 2 a mistake in the input or the environment (or
    studies that cannot give a result), said in one line; 1 a bug, said in one line but for
    --debug; 130 interrupted."""
    parser = _Parser(prog="regbench", description=__doc__)
    _add_output_options(parser, False)
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
    train.add_argument("--pooling", help="what the head reads: cls (BERT's pooler) or mean")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    train.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _add_data_options(train)
    train.set_defaults(run=cmd_train)

    regularizers = commands.add_parser(
        "regularizers", help="list the regularizers: origin, defaults, search space, cost")
    regularizers.add_argument("--model", default="minilm", help="for layer-wise search spaces")
    regularizers.set_defaults(run=cmd_regularizers)

    run = commands.add_parser("run", help="tune and train a suite; rerun to resume")
    run.add_argument("--suite", required=True, help="a built-in suite name or a YAML file")
    run.add_argument("--tasks", type=_names, help="comma-separated, overriding the suite's")
    run.add_argument("--sizes", type=_ints, help="comma-separated training-set sizes")
    run.add_argument("--seeds", type=_ints, help="comma-separated final seeds")
    run.add_argument("--regularizers", type=_names, help="comma-separated")
    run.add_argument("--trials", type=int,
                     help="tuning trials per study; 0 tunes nothing and runs the defaults")
    run.add_argument("--model")
    run.add_argument("--device", default="auto")
    run.add_argument("--storage", help="SQLAlchemy URL (default sqlite:///runs/<suite>.db)")
    run.add_argument("--force", action="store_true", help="rerun runs that are already stored")
    run.add_argument("--heartbeat-timeout", type=float, default=300.0,
                     metavar="SECONDS", help="take over the work of another worker not heard "
                     "from in this long, and wait this long for a database out of reach "
                     "(default 300)")
    run.add_argument("--dry-run", action="store_true", help="print the plan and a time estimate")
    _add_data_options(run)
    run.set_defaults(run=cmd_run)

    results = commands.add_parser("results", help="print or export the stored runs of a suite")
    results.add_argument("--suite", required=True)
    results.add_argument("--storage")
    results.add_argument("--phase", choices=["final", "tune", "all"], default="final")
    results.add_argument("--csv", help="write the runs to this CSV file instead")
    results.add_argument("--force", action="store_true",
                         help="replace a file that --csv names even if results did not write it")
    results.set_defaults(run=cmd_results)

    board = commands.add_parser("leaderboard", help="write the markdown leaderboard of a suite")
    board.add_argument("--suite", required=True, help="a built-in suite name or a YAML file")
    board.add_argument("--storage", help="SQLAlchemy URL (default sqlite:///runs/<suite>.db)")
    board.add_argument("--out", default="leaderboard", help="folder for the markdown and plots")
    board.add_argument("--force", action="store_true",
                       help="replace a published board even by one of fewer runs")
    _add_data_options(board)
    board.set_defaults(run=cmd_leaderboard)

    for command in commands.choices.values():
        _add_output_options(command, argparse.SUPPRESS)

    debug = os.environ.get("REGBENCH_DEBUG", "").strip().lower() in _TRUE
    # A scheduler's SIGTERM ends a worker as Ctrl-C does: its open claims are given back at once.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        _check_debug_variable()
        args = parser.parse_args(_numbers_as_values(sys.argv[1:] if argv is None else argv))
        vars(args).pop(_GIVEN, None)
        debug |= args.debug
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S", stream=sys.stderr)
        if not args.verbose:
            # transformers' load reports and progress bars repeat on every run; regbench logs its
            # own. Said through the environment it reads on import, so that commands which never
            # load a model (leaderboard, results) never import it.
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        args.run(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, rather than at exit
    except BrokenPipeError:
        # The reader has all it wanted (`regbench results | head -1`): not an error. Python would
        # fail again flushing at exit, so what is left goes nowhere.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except RegbenchError as err:
        if debug:
            traceback.print_exc()
        print(f"regbench: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("regbench: interrupted; finished runs are stored: run the same command to resume.",
              file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        said = " ".join(str(err).split())
        print(f"regbench: internal error, a bug in {_culprit(err)}: {type(err).__name__}"
              f"{': ' + said if said else ''}. Run again with --debug (or REGBENCH_DEBUG=1) to "
              "see the traceback, and report it.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
