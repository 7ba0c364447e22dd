"""The pieces that make a stopped command stop everything it started
(:mod:`clmerge.experiment.lifeline`), each at its own seam. The commands themselves,
stopped in a subprocess (SIGTERM, SIGKILL and Ctrl-C to a sweep, SIGTERM to a book,
Ctrl-C on a run), are rows of the fault table (tools/faults.py), checked by
tests/test_faults.py::test_disk_full_and_stopped_commands_for_real."""

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
def _wait_for(what, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if what():
            return True
        time.sleep(0.2)
    return False


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


def test_the_commands_resource_tracker_writes_nowhere_and_ends_by_itself():
    """quiet_resource_tracker: the tracker a command's pools use has its standard error on
    /dev/null, while the command's own stays where it was; end_descendants leaves it to
    end by itself (ended early, it is started again by the next unregistration, with the
    terminal as its standard error and a traceback per name it never saw registered)."""
    code = ("import os, sys\n"
            "from clmerge.experiment import lifeline\n"
            "pid = lifeline.quiet_resource_tracker()\n"
            "print(os.readlink(f'/proc/{pid}/fd/2'), os.readlink('/proc/self/fd/2'))\n"
            "lifeline.end_descendants(grace_s=1)\n"
            "print(lifeline.alive([pid]) == [pid])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True).stdout
    tracker, own, left_alone = out.split()
    assert tracker == os.devnull and own != os.devnull
    assert left_alone == "True"


def test_a_book_outside_the_project_says_where_it_looked(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "clmerge.cli", "book", "--profile", "smoke",
                           "--no-html"], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"clmerge: error: no chapters in {tmp_path.resolve()}/"
                                   "chapters: run clmerge book from the project's folder (a "
                                   "checkout of it) or set CLMERGE_HOME to that folder")
