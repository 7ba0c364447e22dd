"""Durable file writes: temp file, fsync, rename, fsync of the folder; and a lock per file.

A result or checkpoint file is written under a temporary name in its own folder
(``.<name>.<random>.tmp``), flushed to disk (``fsync``), renamed over the final name
(atomic on POSIX) and then the folder itself is fsynced so that the rename survives a
power loss. A crash leaves either the old file or the new one, never a partial file;
what it may leave is a ``.tmp`` file, which :func:`remove_stale_tmp` deletes the next
time the same file is written (under its lock, so never another process's live one).

:func:`file_lock` holds an exclusive ``flock`` on ``<path>.lock`` so that two processes
computing the same result take turns; the lock file is removed on release.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from clmerge.errors import ConfigError
from clmerge.values import short

try:  # POSIX only
    import fcntl
except ImportError:  # not POSIX: runs are not locked against each other
    fcntl = None


class NotRegularFileError(ConfigError):
    """A path where a result, checkpoint or grid file is expected is a FIFO, a device, a
    folder or anything else that is not a regular file."""


def _kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def check_regular(path: str | os.PathLike, what: str) -> None:
    """Raise :class:`NotRegularFileError` when ``path`` exists and is not a regular file
    (``os.stat`` follows links and never blocks)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(f"{path} is a {_kind_of(mode)}, not a regular file, where "
                                  f"{what} is expected; remove it or choose another folder")


def read_regular_bytes(path: str | os.PathLike, what: str, limit: int | None = None) -> bytes:
    """The bytes of the regular file ``path`` (at most ``limit`` + 1 of them): opened
    without blocking and checked with ``fstat`` before anything is read, so a FIFO or a
    device is :class:`NotRegularFileError`, never a read that waits forever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"{path} is a {_kind_of(mode)}, not a regular file, "
                                      f"where {what} is expected; remove it or choose "
                                      f"another folder")
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read() if limit is None else f.read(limit + 1)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync a folder, so a rename inside it is on disk (a no-op where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# the errors of a write that ran out of room: the disk is full, the file is larger than
# the process may write (ulimit -f), the user's quota is spent
NO_ROOM = {errno.ENOSPC: "no space left on the device",
           errno.EFBIG: "the file would be larger than this process may write (ulimit -f)",
           errno.EDQUOT: "the disk quota is exceeded"}
# how the same errors read when a library (safetensors) reports them as its own exception
_NO_ROOM_TEXT = {"no space left": errno.ENOSPC, "file too large": errno.EFBIG,
                 "quota exceeded": errno.EDQUOT}


class NoRoomError(OSError):
    """A write ran out of room (:data:`NO_ROOM`); the message names the file and the
    bytes it needed. Nothing of the write is left behind."""


def _no_room(exc: BaseException) -> int | None:
    """The errno of ``exc`` when it says a write ran out of room, else None."""
    if isinstance(exc, OSError) and exc.errno in NO_ROOM:
        return exc.errno
    text = str(exc).lower()
    return next((code for words, code in _NO_ROOM_TEXT.items() if words in text), None)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None],
                 mode: int = 0o666, size: int | None = None) -> Path:
    """Write ``path`` through ``write(tmp_path)`` durably and atomically.

    The file gets ``mode`` less the process's umask (like a file ``open`` creates), not
    ``mkstemp``'s 0600. A write that runs out of room (disk full, ``ulimit -f``, quota)
    raises :class:`NoRoomError` naming ``path`` and the ``size`` in bytes it needed; the
    temporary file is removed and ``path`` keeps what it held.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        code = _no_room(e) if isinstance(e, Exception) else None
        if code is not None:
            needed = f"{size:,} bytes" if size is not None else "its bytes"
            raise NoRoomError(code, f"cannot write {path}: {NO_ROOM[code]} (it needs "
                                    f"{needed})", str(path)) from None
        raise
    fsync_dir(path.parent)
    return path


def remove_stale_tmp(folder: str | os.PathLike, name: str) -> list[Path]:
    """Delete the temporary files an interrupted :func:`atomic_write` of ``folder/name``
    left behind; return them. Call it only while holding that file's lock."""
    removed = []
    for p in Path(folder).glob(f".{name}.*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, on_wait: Callable[[], None] | None = None
              ) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` for the body (created if needed, removed
    afterwards). ``on_wait`` is called once if another process holds it first."""
    lock = Path(f"{path}.lock")
    if fcntl is None:
        yield
        return
    waited = False
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            # the holder before us may have removed the file: lock the one on disk
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        time.sleep(0.01)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def check_output_folder(folder: str | os.PathLike) -> Path:
    """Refuse, before any work, a results folder that cannot be written: an empty path,
    a path through a file, or a folder (or its nearest existing parent) where a file
    cannot be created. Writes nothing that stays (a probe file is created and removed).
    """
    if str(folder) == "":
        raise ConfigError("the results folder must not be an empty path")
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link
            raise ConfigError(f"results folder {short(str(folder), 60)}: {existing} is a "
                              f"broken link")
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"results folder {short(str(folder), 60)} is not a folder "
                          f"({existing} is a file)")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".clmerge-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"results folder {short(str(folder), 60)} is not writable "
                          f"({e.strerror} in {existing})") from None
    return folder
