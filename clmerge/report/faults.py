"""Faults and bad inputs, tried for real: the table of the book's appendix.

Each case of :data:`CASES` is a command line of ``clmerge`` (run in-process through
:func:`clmerge.cli.main`) with its results folder inside a fresh folder of its own;
:func:`run_faults` runs them and records what happened: the exit status, the first line
of the message, which files appeared or changed under the case's folder (walked before
and after), and the seconds taken. Every outcome in the table is produced by running
the case; nothing is filled in by hand.

Bad inputs must exit with status 2, print one sentence naming the problem (and the
valid choices, where there are choices), and write nothing. Three cases are faults of a
run rather than bad inputs:

- a truncated result file is detected by its checksum and recomputed;
- a NaN loss (not reachable from the command line: the case poisons the loss by
  patching the diagnostics plugin, as ``tests/test_resume.py`` does) stops the run with
  the step and experience named, keeps the checkpoint of the last finished experience
  and writes no result;
- a run killed with SIGKILL in a subprocess resumes from its last checkpoint when it is
  started again (the slowest case, about 10 s on a 2-core machine: most of it the
  subprocess's imports).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from clmerge.experiment.sweep import temporary_environ

EXIT_BAD_INPUT = 2
COLUMNS = ["case", "input", "tests", "expected", "exit", "message", "written", "seconds",
           "outcome", "as_expected"]

@dataclass(frozen=True)
class Case:
    """One fault. ``argv`` may use ``{out}`` (the results folder, created by nobody),
    ``{data}`` (an empty data folder) and ``{grid}`` (the grid file ``grid`` is written
    to); ``needles`` must all appear in the message of a bad input."""

    name: str
    argv: tuple[str, ...]
    tests: str
    needles: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    grid: dict | None = None
    kind: str = "bad input"   # "bad input" | "corrupt result" | "nan loss" | "killed run"


def _run(method: str, *sets: str, profile: str = "smoke", extra: tuple[str, ...] = ()):
    argv = ["run", "--method", method, "--profile", profile, *extra]
    for s in sets:
        argv += ["--set", s]
    return (*argv, "--out", "{out}", "--quiet")


def _book(*args: str):
    return ("book", "--profile", "smoke", "--no-html", *args, "--results-dir", "{out}")


CASES: list[Case] = [
    Case("unknown method", _run("tiez"), "a method name that is not registered",
         ("unknown method 'tiez'", "valid methods: seq, pm,", "ties")),
    Case("unknown benchmark", _run("seq", extra=("--benchmark", "split_cifar10")),
         "a benchmark name that is not registered",
         ("unknown benchmark 'split_cifar10'", "valid benchmarks: synthetic", "split_cifar100")),
    Case("unknown backbone", _run("seq", "backbone=resnet9000"),
         "a backbone name that is not registered",
         ("unknown backbone 'resnet9000'", "valid backbones: mlp")),
    Case("unknown profile", _run("seq", profile="quik"), "a profile that does not exist",
         ("unknown profile 'quik'", "valid profiles: paper, quick, smoke")),
    Case("misspelled setting", _run("seq", "epoch=2"), "--set with a setting that does not exist",
         ("unknown setting 'epoch'", "valid settings:", "epochs")),
    Case("misspelled method option", _run("pm", "pm.epz=0.5"),
         "--set with a method option that does not exist",
         ("unknown option pm.epz", "valid options of 'pm': eps")),
    Case("option of another method", _run("pm", "ties.k=0.2"),
         "--set with an option of a method other than the one run",
         ("'ties.k' belongs to method 'ties'", "valid options of 'pm': eps")),
    Case("--set without a value", _run("seq", "epochs"), "--set without KEY=VALUE",
         ("--set expects KEY=VALUE", "'epochs'")),
    Case("wrong type", _run("seq", "epochs=two"), "a setting given a value of the wrong type",
         ("setting 'epochs' expects an int", "'two'")),
    Case("negative seed", _run("seq", extra=("--seed", "-1")), "a seed below 0",
         ("setting 'seed' must be >= 0",)),
    Case("eps < 0", _run("pm", "pm.eps=-1"), "P&M's perturbation size below 0",
         ("method 'pm': eps must be >= 0",)),
    Case("probabilities do not sum to 1", _run("pm", "pm.p0=0.5"),
         "P&M's p0 changed alone, so p0 + p_plus + p_minus != 1",
         ("p0, p_plus, p_minus must be in [0, 1] and sum to 1",)),
    Case("rank 0", _run("seq", "lora_rank=0"), "a LoRA rank of 0",
         ("setting 'lora_rank' must be >= 1",)),
    Case("temperature 0", _run("trm", "trm.tau=0"), "TRM's distillation temperature of 0",
         ("method 'trm': tau must be > 0",)),
    Case("invalid choice", _run("seq", "device=gpu"), "a setting outside its choices",
         ("setting 'device' must be one of cpu, cuda",)),
    Case("missing dataset folder",
         _run("seq", profile="paper", extra=("--benchmark", "split_cifar100")),
         "the paper profile's Split CIFAR-100 with CLMERGE_DATA pointing at an empty folder",
         ("CIFAR-100 not found", "cifar-100-python.tar.gz", "CLMERGE_DATA"),
         env={"CLMERGE_DATA": "{data}"}),
    Case("unknown papermill parameter", _book("--chapters", "04_comparison", "-p", "seedz=[0]"),
         "clmerge book with a chapter parameter that does not exist", ("seedz",)),
    Case("unknown chapter", _book("--chapters", "nope"), "clmerge book with a chapter that "
         "does not exist", ("unknown chapter(s) ['nope']", "04_comparison")),
    Case("unknown profile of the book",
         ("book", "--profile", "quik", "--no-html", "--chapters", "04_comparison",
          "--results-dir", "{out}"),
         "clmerge book with a profile that does not exist",
         ("unknown profile 'quik'", "valid profiles: paper, quick, smoke")),
    Case("bad sweep grid", ("sweep", "{grid}", "--results-dir", "{out}"),
         "clmerge sweep on a grid file with a misspelled key (seedz)",
         ("unknown grid key 'seedz'", "valid keys: profile"),
         grid={"profile": "smoke", "variants": ["seq", "pm[eps=0.3]"], "seedz": [0, 1]}),
    Case("corrupt result file", _run("seq"),
         "a result file truncated to half its length, then the same run again",
         kind="corrupt result"),
    Case("NaN loss", _run("seq"),
         "the loss poisoned to NaN at step 1 of experience 3 (patched diagnostics plugin; "
         "not reachable from the command line)", kind="nan loss"),
    Case("killed run", _run("seq", "epochs=40"),
         "the run, in a subprocess, killed with SIGKILL after its checkpoint of experience "
         ">= 1, then started again", kind="killed run"),
]

EXPECTED = {
    "bad input": "exit 2, one sentence naming the problem, nothing written",
    "corrupt result": "detected, recomputed, exit 0",
    "nan loss": "exit 1 with a message naming step and experience; last checkpoint kept, "
                "no result",
    "killed run": "resumes after the last checkpointed experience, exit 0",
}


# ---------------------------------------------------------------------- helpers
def _call(argv: list[str], env: dict[str, str] | None = None):
    """``clmerge.cli.main(argv)`` in-process: (exit status or None, stdout, stderr,
    exception raised or None)."""
    from clmerge import cli

    out, err = io.StringIO(), io.StringIO()
    code, exc = None, None
    with temporary_environ(env or {}), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(argv))
        except SystemExit as e:  # argparse's own errors
            code = e.code if isinstance(e.code, int) else 1
        except Exception as e:  # noqa: BLE001 - recorded in the table
            exc = e
    return code, out.getvalue(), err.getvalue(), exc


def _snapshot(*roots: Path) -> dict[str, tuple]:
    found = {}
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.stat()
                found[str(p)] = (p.is_dir(), st.st_size, st.st_mtime_ns)
    return found


def _written(before: dict, after: dict, shorten: Callable[[str], str]) -> list[str]:
    """Files new or changed between two snapshots; new folders only when they hold
    no new file (each shortened for display)."""
    changed = [p for p, v in after.items() if before.get(p) != v]
    files = [p for p in changed if not after[p][0]]
    dirs = [p for p in changed if after[p][0] and p not in before
            and not any(f.startswith(p + os.sep) for f in files)]
    return sorted(shorten(p) for p in files) + sorted(shorten(p) + "/" for p in dirs)


def _first_line(text: str, prefix: str | None = None) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if prefix:
        lines = [ln for ln in lines if ln.startswith(prefix)] or lines
    return lines[0] if lines else ""


class _Folder:
    """A case's folder and how its paths are shown (``TMP/...``)."""

    def __init__(self, root: Path, book: bool = False):
        from clmerge.book import BUILD

        self.root = root
        self.out = root / "out"
        self.data = root / "data"
        self.grid = root / "grid.yaml"
        # `clmerge book` also writes here, outside --results-dir: watched for book cases
        self.build = BUILD / "executed" if book else None
        self._names = [(str(root.resolve()), "TMP"), (str(root), "TMP"),
                       (str(BUILD.parent), "<repo>")]

    def shorten(self, text: str) -> str:
        for long, short in self._names:
            text = text.replace(long, short)
        return text

    def fill(self, argv) -> list[str]:
        return [a.format(out=self.out, data=self.data, grid=self.grid) for a in argv]

    def show(self, argv, env=None) -> str:
        env = " ".join(f"{k}={self.shorten(v)}" for k, v in (env or {}).items())
        cmd = "clmerge " + " ".join(shlex.quote(self.shorten(a)) for a in argv)
        return f"{env} {cmd}".strip()

    def snapshot(self) -> dict:
        return _snapshot(self.root, *([self.build] if self.build else []))


# ---------------------------------------------------------------------- the cases
def _bad_input(case: Case, f: _Folder) -> dict:
    import yaml

    f.data.mkdir()
    if case.grid is not None:
        f.grid.write_text(yaml.safe_dump(case.grid, sort_keys=False))
    argv = f.fill(case.argv)
    env = {k: v.format(data=f.data) for k, v in case.env.items()}
    before = f.snapshot()
    t0 = time.perf_counter()
    code, out, err, exc = _call(argv, env)
    seconds = time.perf_counter() - t0
    written = _written(before, f.snapshot(), f.shorten)
    message = f.shorten(_first_line(err, "clmerge: error:") or _first_line(out)
                        or (f"{type(exc).__name__}: {exc}" if exc else ""))
    missing = [n for n in case.needles if n not in message]
    problems = []
    if code != EXIT_BAD_INPUT:
        problems.append(f"exit {code}" if exc is None else f"raised {type(exc).__name__}")
    if missing:
        problems.append(f"message lacks {missing}")
    if written:
        problems.append("wrote files")
    return dict(input=f.show(argv, env), exit=code if exc is None else type(exc).__name__,
                message=message, written=written, seconds=seconds,
                outcome="; ".join(problems) or "exit 2, message names the problem, "
                                                 "nothing written",
                as_expected=not problems)


def _corrupt_result(case: Case, f: _Folder) -> dict:
    from clmerge.experiment.config import make_config
    from clmerge.experiment.results import read_result, result_path

    argv = f.fill(case.argv)
    code, out, err, exc = _call(argv)   # a valid result to corrupt
    if code != 0:
        return dict(input=f.show(argv), exit=code, message=f.shorten(_first_line(err or out)),
                    written=[], seconds=0.0, outcome="the first run failed", as_expected=False)
    path = result_path(make_config("seq", profile="smoke"), f.out)
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    before = f.snapshot()
    t0 = time.perf_counter()
    code, out, err, exc = _call(argv)
    seconds = time.perf_counter() - t0
    written = _written(before, f.snapshot(), f.shorten)
    message = f.shorten(_first_line(out, "recomputing:") or _first_line(err))
    try:
        valid = read_result(path)["config"]["method"] == "seq"
    except Exception:  # noqa: BLE001
        valid = False
    ok = code == 0 and message.startswith("recomputing:") and valid
    outcome = ("detected, recomputed, valid result written again" if ok else
               f"exit {code}, result valid: {valid}")
    return dict(input="truncate TMP/out/" + path.name + ", then " + f.show(argv), exit=code,
                message=message, written=written, seconds=seconds, outcome=outcome,
                as_expected=ok)


def _nan_loss(case: Case, f: _Folder) -> dict:
    from clmerge.experiment.config import make_config
    from clmerge.experiment.runner import checkpoint_path
    from clmerge.plugins import diagnostics

    argv = f.fill(case.argv)
    original = diagnostics.DiagnosticsPlugin.after_backward

    def poison(self, strategy, **kwargs):
        if strategy.experience.current_experience == 3 and self._step == 1:
            strategy.loss = strategy.loss * float("nan")
        return original(self, strategy, **kwargs)

    before = f.snapshot()
    diagnostics.DiagnosticsPlugin.after_backward = poison
    t0 = time.perf_counter()
    try:
        code, out, err, exc = _call(argv)
    finally:
        diagnostics.DiagnosticsPlugin.after_backward = original
    seconds = time.perf_counter() - t0
    written = _written(before, f.snapshot(), f.shorten)
    state = checkpoint_path(make_config("seq", profile="smoke"), f.out) / "state.json"
    kept = json.loads(state.read_text())["experience"] if state.exists() else None
    results = list(f.out.glob("*.json"))
    message = (f"{type(exc).__name__}: {exc}".splitlines()[0] if exc is not None
               else f.shorten(_first_line(err or out)))
    ok = (code == 1 and exc is None and "experience 3 diverged during training: the loss "
          "became nan at step 1" in message and kept == 2 and not results)
    outcome = (f"checkpoint of experience {kept} kept; "
               f"{'no result file' if not results else 'a result file was written'}")
    return dict(input=f.show(argv) + "  [loss x NaN at step 1 of experience 3]",
                exit=code if exc is None else f"raised {type(exc).__name__}", message=message,
                written=written, seconds=seconds, outcome=outcome, as_expected=ok)


def _killed_run(case: Case, f: _Folder) -> dict:
    from clmerge.experiment.config import make_config
    from clmerge.experiment.results import read_result, result_path
    from clmerge.experiment.runner import checkpoint_path

    argv = f.fill(case.argv)
    cfg = make_config("seq", profile="smoke", overrides={"epochs": 40})
    state = checkpoint_path(cfg, f.out) / "state.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "clmerge.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    done = None
    while time.time() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            if state.exists() and json.loads(state.read_text())["experience"] >= 1:
                break
        time.sleep(0.02)
    finished_first = proc.poll() is not None
    if not finished_first:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    if state.exists():
        done = json.loads(state.read_text())["experience"]
    result_after_kill = result_path(cfg, f.out).exists()
    before = f.snapshot()
    code, out, err, exc = _call(argv)
    seconds = time.perf_counter() - t0
    written = _written(before, f.snapshot(), f.shorten)
    message = f.shorten(_first_line(out, "resuming") or _first_line(err))
    try:
        resumed = read_result(result_path(cfg, f.out))["provenance"]["resumed_after_experience"]
    except Exception:  # noqa: BLE001
        resumed = None
    ok = (not finished_first and not result_after_kill and done is not None
          and code == 0 and resumed == done and message.startswith("resuming"))
    if finished_first:
        outcome = "the subprocess finished before it could be killed"
    else:
        outcome = (f"killed after experience {done} (no result file); the rerun resumed "
                   f"after experience {resumed} and wrote the result")
    return dict(input=f.show(argv) + "  [subprocess, SIGKILL, then again]",
                exit=code if exc is None else f"raised {type(exc).__name__}", message=message,
                written=written, seconds=seconds, outcome=outcome, as_expected=ok)


RUNNERS = {"bad input": _bad_input, "corrupt result": _corrupt_result,
           "nan loss": _nan_loss, "killed run": _killed_run}


def run_faults(tmp_dir: str | os.PathLike | None = None,
               names: list[str] | None = None) -> pd.DataFrame:
    """Run the cases (all, or those named) with their folders under ``tmp_dir`` (a fresh
    temporary folder when None) and return one row per case (columns :data:`COLUMNS`;
    ``written`` is a list of the paths that appeared or changed)."""
    root = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.mkdtemp(prefix="faults-"))
    root.mkdir(parents=True, exist_ok=True)
    known = [c.name for c in CASES]
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        from clmerge.experiment.config import ConfigError
        raise ConfigError(f"unknown fault case(s) {unknown}; cases: {', '.join(known)}")
    rows = []
    for i, case in enumerate(CASES):
        if names is not None and case.name not in names:
            continue
        folder = root / f"{i:02d}"
        folder.mkdir()
        row = RUNNERS[case.kind](case, _Folder(folder, book=case.argv[0] == "book"))
        rows.append({"case": case.name, "tests": case.tests, "expected": EXPECTED[case.kind],
                     **row})
    return pd.DataFrame(rows, columns=COLUMNS)
