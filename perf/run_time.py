"""Wall, user and system seconds of one whole run, with and without the allocator settings.

Runs ``clmerge run`` for one method, seed and benchmark in a child process (one CPU
thread, as every run), alternately with the allocator settings of
:mod:`clmerge.experiment.allocator` and with the system allocator
(``CLMERGE_SYSTEM_MALLOC=1``), and prints each round's times, the medians and their
ratio. The child's times include starting Python and importing torch. Run it on an idle
machine: a run that shares its core with another measures the load, not the run.

    .venv/bin/python perf/run_time.py [--method seq] [--profile quick] [--benchmark NAME] [--rounds 1]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from clmerge.experiment.allocator import child_environment


def timed_run(args: list[str], system_malloc: bool) -> dict:
    env = dict(child_environment(system_malloc), OMP_NUM_THREADS="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clmerge.cli", "run", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": wall, "user": after.ru_utime - before.ru_utime,
            "sys": after.ru_stime - before.ru_stime}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", default="seq")
    ap.add_argument("--benchmark", default=None, help="default: the profile's benchmark")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args(argv)
    settings = {"allocator settings": False, "system allocator": True}
    times: dict[str, list[dict]] = {k: [] for k in settings}
    with tempfile.TemporaryDirectory() as out:
        args = ["--method", a.method, "--profile", a.profile, "--seed", str(a.seed),
                "--out", out, "--force", "--quiet"]
        if a.benchmark:
            args += ["--benchmark", a.benchmark]
        for r in range(a.rounds):
            for name, system in settings.items():
                t = timed_run(args, system)
                times[name].append(t)
                print(f"round {r + 1} {name:>18}: wall {t['wall']:6.1f} s  user {t['user']:6.1f} s"
                      f"  sys {t['sys']:5.1f} s", flush=True)
    med = {k: {m: statistics.median(t[m] for t in v) for m in ("wall", "user", "sys")}
           for k, v in times.items()}
    for k, m in med.items():
        print(f"median {k:>18}: wall {m['wall']:6.1f} s  user {m['user']:6.1f} s  sys {m['sys']:5.1f} s")
    ratio = med["allocator settings"]["wall"] / med["system allocator"]["wall"]
    print(f"wall ratio, allocator settings / system allocator: {ratio:.2f}")
    return med


if __name__ == "__main__":
    main()
