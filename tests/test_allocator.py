"""The allocator settings change memory handling only: a run gives the same numbers with
and without them, and the result records which was in effect."""

import os
import platform
import subprocess
import sys

import pytest

from clmerge.experiment import allocator
from clmerge.experiment.config import make_config
from clmerge.experiment.results import read_result, result_path


def test_settings_apply_once_and_report_the_same_answer():
    first = allocator.keep_freed_memory()
    assert allocator.keep_freed_memory() is first
    if sys.platform.startswith("linux") and not os.environ.get(allocator.OFF):
        if platform.libc_ver()[0] == "glibc":
            assert first is True


def _run(out, system_malloc: bool):
    env = dict(allocator.child_environment(system_malloc), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "clmerge.cli", "run", "--method", "pm", "--profile", "smoke",
           "--seed", "0", "--out", str(out), "--quiet"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    return read_result(result_path(make_config("pm", profile="smoke"), out))


@pytest.mark.slow
def test_same_numbers_with_and_without_the_settings(tmp_path):
    kept = _run(tmp_path / "kept", system_malloc=False)
    system = _run(tmp_path / "system", system_malloc=True)
    assert system["provenance"]["malloc_keeps_freed_memory"] is False
    assert kept["provenance"]["malloc_keeps_freed_memory"] is allocator.keep_freed_memory()
    timing = {"merge_seconds", "train_seconds"}
    for key in ("R", "R_til", "metrics", "tasks"):
        a, b = kept[key], system[key]
        if key == "tasks":   # everything a task records except its timings
            a, b = ([{k: v for k, v in t.items() if k not in timing} for t in x] for x in (a, b))
        assert a == b, key
