"""Wall seconds of ``clmerge book`` from committed results, chapters executed N at a time.

For each value of ``--jobs`` (default: 1, then the default of ``clmerge book``), clears the
execution cache (``execute.cache`` of ``_config.yml``, ``_build/.jupyter_cache``), so that
every chapter executes again (nothing else of ``_build`` is touched), and times
``clmerge book --profile P --jobs N`` in a child process, then prints each time and the
ratio to the first. Run it on an idle machine with the environment installed.

    .venv/bin/python perf/book_time.py [--profile quick] [--jobs 1 2]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time

from clmerge import book, book_cache


def timed_build(profile: str, jobs: int) -> float:
    cache = book_cache.execute_settings(book.ROOT / "_config.yml")["cache"]
    shutil.rmtree(book.ROOT / cache, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clmerge.cli", "book", "--profile", profile,
                    "--jobs", str(jobs)], cwd=book.ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[int, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, book_cache.default_jobs()])
    args = ap.parse_args(argv)
    times = {}
    for jobs in args.jobs:
        times[jobs] = timed_build(args.profile, jobs)
        ratio = times[jobs] / times[args.jobs[0]]
        print(f"--jobs {jobs}: {times[jobs]:.0f} s wall (x{ratio:.2f} of --jobs "
              f"{args.jobs[0]})", flush=True)
    return times


if __name__ == "__main__":
    main()
