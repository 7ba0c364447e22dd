"""The ``clmerge`` command line: run, list, book, sweep.

    clmerge run --method M --benchmark B [--profile P] [--seed S] [--set KEY=VALUE ...] [--out DIR] [--force]
    clmerge list methods|benchmarks|backbones|profiles
    clmerge book [--profile P] [--force] [--no-html] [--chapters NAME ...] [-p KEY=VALUE ...] [--results-dir DIR] [--jobs N]
    clmerge sweep GRID.yaml [--executor local|submitit_local|slurm] [--workers N] [--results-dir DIR] [--dry-run]

Unknown names and bad values fail before any work with one message naming the valid
choices and exit status 2; nothing is written. A run whose loss or weights diverge
(:mod:`clmerge.plugins.guard`), or that cannot write its files, stops with one sentence
and exit status 1, and writes no result.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path

from clmerge.backbones.registry import BACKBONES
from clmerge.benchmarks.registry import BENCHMARKS, describe
from clmerge.errors import ConfigError, MissingInputError
from clmerge.experiment import lifeline
from clmerge.experiment.atomic import NoRoomError, check_output_folder, read_regular_bytes
from clmerge.experiment.config import load_profile, make_config, parse_assignments, profile_names
from clmerge.experiment.results import result_path
from clmerge.experiment.runner import DEFAULT_RESULTS, checkpoint_path, get_or_run
from clmerge.strategies.methods import METHODS

# Each command imports its own machinery when it runs (``book``: the book's,
# ``sweep``: the executors'), so ``clmerge run`` loads only what a run needs.

MAX_MESSAGE = 400  # characters of an error message printed (they are one sentence)


def _say(kind: str, message: str) -> None:
    """Print ``clmerge: KIND: MESSAGE`` as one line of at most ``MAX_MESSAGE`` characters."""
    text = " ".join(str(message).split())
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 3] + "..."
    print(f"clmerge: {kind}: {text}", file=sys.stderr, flush=True)


class _Once(argparse.Action):
    """Store an option that may be given once: a second ``--seed 1 --seed 2`` is refused
    (exit 2, naming both values) rather than the last one winning in silence."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = getattr(namespace, f"_seen_{self.dest}", None)
        if seen is not None:
            parser.error(f"{option_string} is given twice ({seen} and {values}); give it once")
        setattr(namespace, f"_seen_{self.dest}", values)
        setattr(namespace, self.dest, values)


def _name(value: str) -> str:
    """A name given on the command line: not empty (``--benchmark ''``)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("an empty name; give a name")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own exit 2, with our wording
        self.print_usage(sys.stderr)
        self.exit(2, f"clmerge: error: {message}\n")


def _list(what: str) -> list[tuple[str, str]]:
    if what == "methods":
        return [(n, s.description) for n, s in METHODS.items()]
    if what == "benchmarks":
        return [(n, describe(n)) for n in BENCHMARKS]
    if what == "backbones":
        return [(n, d) for n, (_, d) in BACKBONES.items()]
    return [(n, load_profile(n).get("description", "")) for n in profile_names()]


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="clmerge", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run one experiment and print where its result went")
    r.add_argument("--method", required=True, action=_Once, type=_name,
                   help="see `clmerge list methods`")
    r.add_argument("--benchmark", default=None, action=_Once, type=_name,
                   help="default: the profile's benchmark")
    r.add_argument("--profile", default="quick", action=_Once, type=_name,
                   help="see `clmerge list profiles`")
    r.add_argument("--seed", type=int, default=0, action=_Once)
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting (epochs=2) or a method option (pm.eps=0.3)")
    r.add_argument("--out", default=None, action=_Once,
                   help="results folder (default: data/results)")
    r.add_argument("--force", action="store_true", help="recompute even if the result exists")
    r.add_argument("--quiet", action="store_true", help="no progress bars")

    ls = sub.add_parser("list", help="list registered names")
    ls.add_argument("what", choices=["methods", "benchmarks", "backbones", "profiles"])

    b = sub.add_parser("book", help="parameterize every chapter with papermill and build the "
                                     "HTML, executing the chapters through the cache")
    b.add_argument("--profile", default="quick", action=_Once, type=_name)
    b.add_argument("--force", action="store_true", help="recompute results that exist")
    b.add_argument("--no-html", action="store_true",
                   help="execute the chapters with papermill only (no cache, no HTML)")
    b.add_argument("--chapters", nargs="+", default=None, action=_Once,
                   help="the chapters (stems) -p applies to; with --no-html, the only ones run")
    b.add_argument("-p", "--parameter", dest="parameters", action="append", default=[],
                   metavar="KEY=VALUE",
                   help="set a chapter parameter (VALUE is YAML: -p seeds='[0, 1]'); each "
                        "must be a parameter of every selected chapter")
    b.add_argument("--results-dir", default=None, action=_Once,
                   help="results folder the chapters read and write (default: read "
                        "data/results, write new runs to _build/results)")
    b.add_argument("--jobs", type=int, default=None, action=_Once,
                   help="chapters executed at once into the execution cache before the "
                        "build (default: one per core, at most 4; 1: the build executes "
                        "them one by one)")

    sw = sub.add_parser("sweep", help="run a grid of experiments (skipping finished ones) "
                                      "and collect them into one table")
    sw.add_argument("grid", nargs="+", help="YAML grid file(s) (see examples/sweep_quick.yaml); "
                    "several run one after the other: clmerge sweep examples/final/*.yaml")
    sw.add_argument("--executor", choices=["local", "submitit_local", "slurm"], default=None,
                    action=_Once,
                    help="where the runs go (default: the grid's, else local)")
    sw.add_argument("--workers", type=int, default=None, action=_Once,
                    help="runs at a time (default: the grid's, else one per core or GPU)")
    sw.add_argument("--results-dir", default=None, action=_Once,
                    help="results folder (default: the grid's, else data/results)")
    sw.add_argument("--dry-run", action="store_true",
                    help="print which runs are finished and which would run; compute nothing")
    return p


INTERRUPTED = "interrupted; rerun the same command to resume"


@contextlib.contextmanager
def _stopped_cleanly(command: str):
    """While a run, book or sweep works, SIGTERM and SIGINT end every process it started
    before it unwinds (:mod:`clmerge.experiment.lifeline`); the handlers in place before
    are restored after (the command may run inside another program, e.g. the tests).
    The processes it starts inherit :data:`~clmerge.experiment.lifeline.QUIET_TRACKER`
    in ``PYTHONWARNINGS``, and the command's own resource tracker writes to
    ``/dev/null`` (:func:`~clmerge.experiment.lifeline.quiet_resource_tracker`), so that
    the last line of a stopped command is its own."""
    if (command not in ("run", "book", "sweep")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    warnings = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, (warnings, lifeline.QUIET_TRACKER)))
    lifeline.stop_on_signals()
    lifeline.quiet_resource_tracker()
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if warnings is None:
            os.environ.pop("PYTHONWARNINGS", None)
        else:
            os.environ["PYTHONWARNINGS"] = warnings


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _stopped_cleanly(args.command):
            return _main(args)
    except KeyboardInterrupt as e:   # Ctrl-C or SIGTERM: everything started has ended
        lifeline.end_descendants()
        print(f"clmerge: {INTERRUPTED}", file=sys.stderr, flush=True)
        code = 128 + getattr(e, "signum", signal.SIGINT)
        if argv is None:   # the program itself (not a caller in-process): end now, without
            sys.stdout.flush()   # joining the threads of the pools it stopped
            os._exit(code)
        return code


def _main(args) -> int:
    try:
        if args.command == "list":
            rows = _list(args.what)
            width = max(len(n) for n, _ in rows)
            for n, d in rows:
                print(f"{n:<{width}}  {d}")
            return 0
        if args.command == "run":
            return _run(args)
        if args.command == "book":
            from clmerge.book import (build_book, check_parameter_values, check_parameters,
                                      parse_parameters)

            load_profile(args.profile)      # unknown names fail before _build/ is touched
            params = parse_parameters(args.parameters)
            selected = check_parameters(args.chapters, params)  # also: unknown chapters
            check_parameter_values(selected, args.profile)
            if args.results_dir is not None:
                check_output_folder(args.results_dir)
            if args.jobs is not None and args.jobs < 1:
                raise ConfigError(f"--jobs {args.jobs}: at least 1 chapter at a time")
            return build_book(profile=args.profile, force=args.force, html=not args.no_html,
                              only=args.chapters, results_dir=args.results_dir, params=params,
                              jobs=args.jobs)
        if args.command == "sweep":
            return _sweep(args)
    except ConfigError as e:
        _say("error", str(e))
        return 2 if getattr(e, "user_error", True) else 1   # a chapter's own failure: 1
    except FloatingPointError as e:  # a diverged run (clmerge.plugins.guard): nothing saved
        _say("error", f"{e}; {_kept(args, e)}")
        return 1
    except NoRoomError as e:  # disk full, ulimit -f, quota: the last checkpoint stays
        _say("error", f"{e.strerror}; {_kept(args, e)}")
        return 1
    except MissingInputError as e:  # missing data / weights: user errors
        _say("error", str(e))
        return 2
    except OSError as e:  # the disk is full, a folder vanished: not the code's fault
        _say("error", f"cannot write: {e.strerror or e} ({e.filename or 'a file'}); "
                      f"no result was written for it")
        return 1
    return 0


def _kept(args, error: Exception) -> str:
    """What a run that stopped (diverged, or out of room) left behind, for its message."""
    if isinstance(error, FloatingPointError) and not hasattr(error, "experience"):
        return "no result was written"
    kept = getattr(args, "_checkpoint", None)
    if kept is None:
        return "no result was written for it"
    done = None
    if kept.exists():
        try:
            done = json.loads(read_regular_bytes(kept, "a checkpoint's state.json"))["experience"]
        except (OSError, ValueError, KeyError, TypeError):
            done = None
    if done is None:
        return "no result or checkpoint was written"
    return f"no result was written and the checkpoint of experience {done} is kept"


def _run(args) -> int:
    cfg = make_config(args.method, args.benchmark, args.profile, args.seed,
                      parse_assignments(args.sets))
    out = Path(check_output_folder(args.out)) if args.out is not None else DEFAULT_RESULTS
    args._checkpoint = checkpoint_path(cfg, out) / "state.json"
    result = get_or_run(cfg, out, force=args.force, progress=not args.quiet)
    m = result["metrics"]
    print(f"{result['variant']} on {cfg.benchmark} (seed {cfg.seed}): "
          f"class-incremental A_last {m['cil']['A_last']:.4f}, "
          f"task-incremental A_last {m['til']['A_last']:.4f}")
    print(result_path(cfg, out))
    return 0


def _sweep(args) -> int:
    """Each grid in turn (all of them checked before any runs); 1 when a run failed."""
    from clmerge.experiment import sweep

    grids = [sweep.load_grid(g, args.executor, args.workers, args.results_dir) for g in args.grid]
    expanded = []
    for path, grid in zip(args.grid, grids):   # every run of every grid resolved first
        size = sweep.grid_size(grid)
        if size > 500:
            print(f"resolving the {size} runs of {path}", flush=True)
        expanded.append(sweep.expand_grid(grid))
    status = 0
    for path, grid, cfgs in zip(args.grid, grids, expanded):
        if len(grids) > 1:
            print(f"== {path}", flush=True)
        if args.dry_run:
            print(sweep.format_plan(*sweep.plan(cfgs, grid.results_dir)))
            continue
        check_output_folder(grid.results_dir)
        try:
            df = sweep.run_sweep(grid)
        except sweep.SweepError as e:
            _say("error", str(e))
            status = 1
            continue
        cols = [c for c in sweep.TABLE_COLUMNS if c in df.columns]
        print(df[cols].to_string(index=False))
        out = sweep.table_path(grid)
        df.to_csv(out, index=False)
        print(out)
    return status


if __name__ == "__main__":
    sys.exit(main())
