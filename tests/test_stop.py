"""A stopped command stops everything it started: SIGTERM or SIGINT to ``clmerge sweep``
(2 pool workers) or ``clmerge book`` (its kernels and their pools) ends the whole process
tree within 10 s, prints one line (no traceback) and exits 143 / 130; SIGKILL of the
sweep ends its workers too; in every case no file appears in the results folder after
the command has ended. Each case runs the command in a subprocess on the smoke profile."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from clmerge.experiment.lifeline import alive as _alive, descendants

ROOT = Path(__file__).resolve().parents[1]
GRACE_S = 10


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns
            for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


def _start(argv, tmp_path):
    """The command in its own session, its output into files (a pipe nobody reads while
    the test waits would fill and stop the command)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    if argv[0] == "book":   # the chapters are the project's (it runs in a scratch folder)
        env["CLMERGE_HOME"] = str(ROOT)
    with open(tmp_path / "stdout.txt", "w") as out, open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "clmerge.cli", *argv], cwd=tmp_path,
                                env=env, stdout=out, stderr=err, start_new_session=True)
    proc.stderr_path = tmp_path / "stderr.txt"
    return proc


def _wait_for(what, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if what():
            return True
        time.sleep(0.2)
    return False


def _stop_and_check(proc, sig, results: Path, expect_code, expect_line=True):
    tree = descendants(proc.pid)
    assert tree, "the command had started no process yet"
    t0 = time.time()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    ended = time.time() - t0
    err = proc.stderr_path.read_text()
    assert _wait_for(lambda: not _alive(tree), GRACE_S), f"left running: {_alive(tree)}"
    assert ended < GRACE_S, ended
    after_exit = _files(results)
    time.sleep(3)   # nothing appears afterwards
    assert _files(results) == after_exit
    if expect_code is not None:
        assert proc.returncode == expect_code, err[-2000:]
    if expect_line:
        assert "Traceback" not in err, err[-3000:]
        assert err.strip().splitlines()[-1] == ("clmerge: interrupted; rerun the same "
                                                "command to resume")


@pytest.fixture
def grid(tmp_path):
    g = tmp_path / "grid.yaml"
    g.write_text(yaml.safe_dump({"profile": "smoke", "variants": ["seq", "average"],
                                 "overrides": {"epochs": 200}}))
    return g


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_sweep_ends_its_workers_and_writes_nothing_after(tmp_path, grid, sig, code):
    results = tmp_path / "results"
    proc = _start(["sweep", str(grid), "--workers", "2", "--results-dir", str(results)],
                  tmp_path)
    # both workers running (each has written its first checkpoint)
    assert _wait_for(lambda: len(list(results.glob("_checkpoints/*/state.json"))) >= 2)
    _stop_and_check(proc, sig, results, code)
    assert not list(results.glob("*.json"))


@pytest.mark.slow
def test_a_killed_sweep_s_workers_notice_and_write_nothing(tmp_path, grid):
    results = tmp_path / "results"
    proc = _start(["sweep", str(grid), "--workers", "2", "--results-dir", str(results)],
                  tmp_path)
    assert _wait_for(lambda: len(list(results.glob("_checkpoints/*/state.json"))) >= 2)
    _stop_and_check(proc, signal.SIGKILL, results, -signal.SIGKILL, expect_line=False)
    assert not list(results.glob("*.json"))


@pytest.mark.slow
def test_a_stopped_book_ends_its_kernels_and_writes_nothing_after(tmp_path):
    results = tmp_path / "results"
    proc = _start(["book", "--profile", "smoke", "--no-html", "--chapters", "04_comparison",
                   "--results-dir", str(results)], tmp_path)
    # the chapter's kernel is computing (a checkpoint or a result has appeared)
    assert _wait_for(lambda: any(results.rglob("*.json")))
    _stop_and_check(proc, signal.SIGTERM, results, 143)


def test_end_descendants_ends_children_and_grandchildren_even_one_ignoring_sigterm():
    from clmerge.experiment.lifeline import end_descendants
    code = ("import os, signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            "time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", code])
    assert _wait_for(lambda: len(descendants(child.pid)) >= 1, 60)
    tree = [child.pid, *descendants(child.pid)]   # (not the test process's other children)
    t0 = time.time()
    signalled = end_descendants(grace_s=5)
    assert set(tree) <= set(signalled)
    assert _wait_for(lambda: not _alive(tree), 5) and time.time() - t0 < 7
    child.wait(5)


def test_a_worker_whose_parent_has_ended_knows_it(tmp_path):
    """die_with_parent: a grandchild watching its parent ends when that parent is
    killed (the parent-death signal), before it could write its file."""
    marker = tmp_path / "written"
    worker = ("import sys, time\n"
              "from clmerge.experiment import lifeline\n"
              "lifeline.die_with_parent()\n"
              "time.sleep(8)\n"
              f"open({str(marker)!r}, 'w').write('late')\n")
    parent = ("import subprocess, sys, time\n"
              f"subprocess.Popen([sys.executable, '-c', {worker!r}])\n"
              "time.sleep(600)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", parent], env=env)
    assert _wait_for(lambda: len(descendants(proc.pid)) >= 1, 60)
    time.sleep(3)   # the worker has imported lifeline and asked for the signal
    workers = descendants(proc.pid)
    proc.kill()
    proc.wait()
    assert _wait_for(lambda: not _alive(workers), 5)
    time.sleep(8)
    assert not marker.exists()


def test_the_commands_resource_tracker_writes_nowhere():
    """quiet_resource_tracker: the tracker a command's pools use has its standard error on
    /dev/null, while the command's own stays where it was."""
    code = ("import os, sys\n"
            "from clmerge.experiment.lifeline import quiet_resource_tracker\n"
            "pid = quiet_resource_tracker()\n"
            "print(os.readlink(f'/proc/{pid}/fd/2'), os.readlink('/proc/self/fd/2'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True).stdout
    tracker, own = out.split()
    assert tracker == os.devnull and own != os.devnull


def test_a_book_outside_the_project_says_where_it_looked(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "clmerge.cli", "book", "--profile", "smoke",
                           "--no-html"], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"clmerge: error: no chapters in {tmp_path.resolve()}/"
                                   "chapters: run clmerge book from the project's folder (a "
                                   "checkout of it) or set CLMERGE_HOME to that folder")
