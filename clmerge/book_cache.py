"""Fill the book's execution cache with the staged chapters, several at a time.

``jupyter-book build`` executes the pages one after the other, each in a fresh kernel, and
most of a chapter's time from committed results is its kernel importing torch, Avalanche,
timm and pandas, not its work (``perf/book_time.py`` times the build).
Before the build, :func:`prefill` executes the staged chapters that the cache does not hold
yet in ``jobs`` kernels at once and stores each executed notebook in the same jupyter-cache
the build reads (``execute.cache`` of ``_config.yml``), exactly as myst-nb would: keyed by
the code cells' source (:meth:`JupyterCacheBase.create_hashed_notebook`), with
``execution_seconds`` recorded, in the chapter's own folder, with the configured timeout and
``allow_errors``. The build then takes every such chapter from the cache, and the book's
execution table shows each one's own run time.

A chapter that stops with an error is not cached: the build executes it again and reports
the error with its traceback, as without this step. ``jobs=1`` skips the step.

The kernels run from threads of this process (nbclient drives each kernel over ZeroMQ from
its own event loop); the cache's SQLite database is written from this thread only.
"""

from __future__ import annotations

import copy
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import yaml

# jupyter_cache and nbformat come with the optional ``book`` extra (pyproject.toml): they
# are imported inside the functions that need them, like papermill in clmerge.book


def default_jobs() -> int:
    """Kernels at a time: one per core, at most 4 (chapters are mostly imports and
    pandas; more kernels than cores only slow each other)."""
    return max(1, min(4, os.cpu_count() or 1))


def execute_settings(config: Path) -> dict:
    """The ``execute`` section of a ``_config.yml``, with jupyter-book's defaults."""
    section = (yaml.safe_load(config.read_text()) or {}).get("execute", {}) or {}
    return {"mode": section.get("execute_notebooks", "auto"),
            "cache": section.get("cache", ""),
            "timeout": section.get("timeout", 30),
            "allow_errors": bool(section.get("allow_errors", False))}


def _execute(path: Path, nb, timeout, allow_errors: bool):
    """Execute a copy of ``nb`` (read from ``path``) in ``path``'s folder."""
    from jupyter_cache.executors.utils import single_nb_execution

    return single_nb_execution(copy.deepcopy(nb), cwd=str(path.parent), timeout=timeout,
                               allow_errors=allow_errors, meta_override=True)


def prefill(notebooks: list[Path], cache_dir: Path, timeout=-1, allow_errors: bool = False,
            jobs: int | None = None, say=print) -> dict[str, float | None]:
    """Execute every notebook of ``notebooks`` that ``cache_dir`` does not hold, ``jobs``
    at a time, and cache each one that succeeds. Returns ``{stem: seconds}`` for those
    executed (``None`` for one that failed); a notebook already cached is left out."""
    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    jobs = default_jobs() if jobs is None else jobs
    if jobs <= 1 or not notebooks:
        return {}
    cache = get_cache(str(cache_dir))
    todo = {}   # path -> the unexecuted notebook, whose code cells are the cache's key
    for path in notebooks:
        nb = nbformat.read(str(path), as_version=4)
        try:
            cache.match_cache_notebook(nb)
        except KeyError:
            todo[Path(path)] = nb
    if not todo:
        return {}
    jobs = min(jobs, len(todo))
    say(f"executing {len(todo)} chapter(s) in {jobs} kernels at once "
        f"(into the execution cache {cache_dir})", flush=True)
    done: dict[str, float | None] = {}
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(_execute, p, nb, timeout, allow_errors): p
                   for p, nb in todo.items()}
        for future in as_completed(futures):
            path = futures[future]
            try:
                result = future.result()
            except Exception as e:   # the kernel did not start, ...: the build retries it
                say(f"  {path.stem}: could not execute ({type(e).__name__}: {e}); "
                    f"the build will", flush=True)
                done[path.stem] = None
                continue
            if result.err is not None:
                say(f"  {path.stem}: stopped with {type(result.err).__name__}; the build "
                    f"runs it again and shows the error", flush=True)
                done[path.stem] = None
                continue
            record = cache.add_nb_to_project(str(path))
            cache.cache_notebook_bundle(
                CacheBundleIn(result.nb, record.uri,
                              data={"execution_seconds": result.time}),
                check_validity=False, overwrite=True)
            try:   # the key is the unexecuted notebook's: check that the build finds it
                cache.match_cache_notebook(todo[path])
            except KeyError:
                say(f"  {path.stem}: cached under another key; the build runs it again",
                    flush=True)
                done[path.stem] = None
                continue
            done[path.stem] = result.time
            say(f"  {path.stem}: {result.time:.0f} s", flush=True)
    say(f"  {len([v for v in done.values() if v is not None])} of {len(todo)} cached in "
        f"{time.perf_counter() - t0:.0f} s", flush=True)
    return done
