"""Processes that end with the command that started them.

A ``clmerge book`` or ``clmerge sweep`` starts processes of its own: the chapters'
kernels, their pools of run workers, submitit's jobs. Two rules keep any of them from
outliving the command, or writing a result after it has ended:

- **Stopped by a signal** (SIGTERM, or SIGINT: Ctrl-C): :func:`stop_on_signals` makes
  the command end every process it started (:func:`end_descendants`: SIGTERM to each,
  SIGKILL to what is left after ``GRACE_S`` seconds) before it unwinds, then raise
  :class:`Interrupted` (a ``KeyboardInterrupt``) in the command, which prints one line
  and exits 130 (SIGINT) or 143 (SIGTERM).
- **Killed** (SIGKILL, which nothing can catch): a worker asks the kernel to kill it
  when its parent dies (:func:`die_with_parent`, ``prctl(PR_SET_PDEATHSIG, SIGKILL)``
  on Linux), and, where that is unavailable or the parent is not the command (a
  submitit job's parent is submitit's own launcher), a thread polls the command's pid
  every ``POLL_S`` seconds and ends the worker when it is gone. Before a result is
  written, :func:`parent_alive` is asked again, so a worker whose command has ended
  writes nothing.

Descendants are found through ``/proc`` (Linux); elsewhere only the workers' own checks
apply.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

GRACE_S = 5.0
POLL_S = 1.0
# the environment variable that tells a job which process it must not outlive
PARENT_ENV = "CLMERGE_PARENT_PID"
_PR_SET_PDEATHSIG = 1
# A process ended by a signal (a chapter's kernel, a pool's worker) leaves the semaphores
# of its pools to multiprocessing's resource tracker, which unlinks them and warns of
# each, on the command's terminal, after the command's last line. The processes a
# command starts get this warnings filter (``PYTHONWARNINGS``): the tracker still
# cleans up, silently.
QUIET_TRACKER = "ignore::UserWarning:multiprocessing.resource_tracker"

_parent: int | None = None      # the pid whose death ends this process (None: not watched)
_is_parent = False              # whether it was this process's parent when watched


class Interrupted(KeyboardInterrupt):
    """The command was stopped by ``signum`` (SIGINT or SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _processes() -> dict[int, tuple[int, int]]:
    """``{pid: (parent pid, process group)}`` of every living process, from ``/proc``
    (zombies left out: they have ended); empty where there is no ``/proc``."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    table = {}
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and fields[0] != "Z":
            table[int(entry)] = (int(fields[1]), int(fields[2]))
    return table


def descendants(pid: int | None = None, table: dict | None = None) -> list[int]:
    """The pids of every living descendant of ``pid`` (default: this process), from
    ``/proc``; empty where there is no ``/proc``."""
    root = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    for child, (parent, _) in (_processes() if table is None else table).items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pids) -> list[int]:
    """Those of ``pids`` that are living processes (zombies count as ended)."""
    living = _processes()
    return [p for p in pids if p in living]


def _ignores_sigterm(pid: int) -> bool:
    """Whether ``pid`` ignores SIGTERM (multiprocessing's resource tracker does), from
    its ``SigIgn`` mask in ``/proc``."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigIgn:"):
                    return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    except (OSError, ValueError):
        pass
    return False


def _ends_with_us(pid: int) -> bool:
    """Whether ``pid`` is multiprocessing's resource tracker: it ends by itself when the
    processes that use it have ended (and is started again if it is killed first)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"multiprocessing.resource_tracker" in f.read()
    except OSError:
        return False


def end_descendants(grace_s: float = GRACE_S) -> list[int]:
    """SIGTERM every descendant of this process (SIGKILL to one that ignores SIGTERM),
    SIGKILL those still alive after ``grace_s`` seconds, and any started meanwhile; the
    pids signalled. Their exit statuses are left to their parents to collect.

    The resource tracker is left alone: it ends by itself once every process holding
    its pipe has ended, after removing what they left. Ended early, it would be started
    again by the next unregistration (a stopped pool's queues still send some while the
    command ends), with the terminal as its standard error and a traceback for each
    name it never saw registered.

    A descendant's process group (a kernel leads its own, and its pool's workers are
    in it) is followed too: a worker started just before its parent was ended is no
    longer a descendant (it has a new parent), but it is still in that group."""
    signalled: set[int] = set()
    groups: set[int] = set()
    own_group = os.getpgrp()
    deadline = time.monotonic() + grace_s
    while True:
        table = _processes()
        tree = descendants(table=table)
        groups.update(table[p][1] for p in tree if p in table)
        groups.discard(own_group)
        tree += [p for p, (_, g) in table.items() if g in groups and p not in tree
                 and p != os.getpid()]
        alive = [p for p in tree if not _ends_with_us(p)]
        if not alive or time.monotonic() > deadline + grace_s:
            break
        late = time.monotonic() >= deadline
        for pid in alive:
            if pid in signalled and not late:
                continue
            kill = late or _ignores_sigterm(pid)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
            signalled.add(pid)
        time.sleep(0.05)
    return sorted(signalled)


def quiet_resource_tracker() -> int | None:
    """Start multiprocessing's resource tracker now, with its standard error on
    ``/dev/null``, and return its pid (None where it cannot start). The tracker writes
    to the command's terminal after the command has ended: a warning per semaphore left
    by a process ended by a signal, and a traceback of its own bookkeeping when a stopped
    process's unregistration reaches it twice. It still cleans up; it only no longer
    speaks, so that the last line of a stopped command is the command's own."""
    from multiprocessing import resource_tracker

    if getattr(resource_tracker._resource_tracker, "_pid", None) is not None:
        return resource_tracker._resource_tracker._pid
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    devnull, saved = os.open(os.devnull, os.O_WRONLY), os.dup(2)
    try:
        os.dup2(devnull, 2)
        resource_tracker.ensure_running()
    except OSError:
        return None
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return resource_tracker._resource_tracker._pid


def stop_on_signals() -> None:
    """From now on, SIGTERM and SIGINT end every descendant and then raise
    :class:`Interrupted` in the main thread (call it from the main thread)."""
    def handler(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)    # one stop, not one per signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        end_descendants()
        raise Interrupted(signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def die_with_parent(parent: int | None = None) -> None:
    """End this process when ``parent`` (default: the pid in ``CLMERGE_PARENT_PID``, else
    the parent process) ends: a parent-death signal where it is the real parent, and a
    watching thread in every case."""
    global _parent, _is_parent
    named = os.environ.get(PARENT_ENV, "")
    if parent is None:
        parent = int(named) if named.isdigit() else os.getppid()
    _parent, _is_parent = parent, parent == os.getppid()
    if _is_parent:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if not parent_alive():   # it died before the signal was asked for
        os._exit(1)

    def watch():
        while parent_alive():
            time.sleep(POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="clmerge-lifeline", daemon=True).start()


def parent_alive() -> bool:
    """False once the process this one must not outlive has ended (True when none is
    watched)."""
    if _parent is None:
        return True
    if _is_parent:
        return os.getppid() == _parent
    try:
        os.kill(_parent, 0)
    except ProcessLookupError:
        return False
    except OSError:   # alive, another user's
        return True
    return True
