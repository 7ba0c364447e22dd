"""Wall, user and system seconds of one whole run, with and without the allocator settings,
or against another checkout of the code.

Runs ``clmerge run`` for one method, seed and benchmark in a child process (one CPU
thread, as every run), alternately with the allocator settings of
:mod:`clmerge.experiment.allocator` and with the system allocator
(``CLMERGE_SYSTEM_MALLOC=1``), and prints each round's times, the medians and their
ratio. With ``--compare DIR``, the alternation is instead between this checkout and the
checkout at DIR (both with the allocator settings), and the accuracy matrices of the two
are compared bit for bit. The child's times include starting Python and importing torch.
Run it on an idle machine: a run that shares its core with another measures the load,
not the run (user + system seconds are disturbed less than wall seconds); the load
average is printed before and after.

    .venv/bin/python perf/run_time.py [--method seq] [--profile quick] [--benchmark NAME] [--rounds 1]
        [--compare DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from clmerge.experiment.allocator import child_environment

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed_run(args: list[str], system_malloc: bool, code: str | None = None) -> dict:
    env = dict(child_environment(system_malloc), OMP_NUM_THREADS="1")
    if code is not None:
        env["PYTHONPATH"] = code
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clmerge.cli", "run", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, cwd=code)
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
    ap.add_argument("--compare", default=None, metavar="DIR",
                    help="alternate with the checkout at DIR instead of the system allocator")
    a = ap.parse_args(argv)
    if a.compare:
        settings = {"this checkout": (False, HERE), "compared checkout": (False, a.compare)}
    else:
        settings = {"allocator settings": (False, None), "system allocator": (True, None)}
    first, second = settings
    times: dict[str, list[dict]] = {k: [] for k in settings}
    matrices: dict[str, list] = {}
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for name, (system, code) in settings.items():
                out = os.path.join(tmp, name.replace(" ", "_"))
                args = ["--method", a.method, "--profile", a.profile, "--seed", str(a.seed),
                        "--out", out, "--force", "--quiet"]
                if a.benchmark:
                    args += ["--benchmark", a.benchmark]
                t = timed_run(args, system, code)
                times[name].append(t)
                for f in os.listdir(out):
                    if f.endswith(".json"):
                        res = json.load(open(os.path.join(out, f)))
                        matrices[name] = [res["R"], res["R_til"]]
                print(f"round {r + 1} {name:>18}: wall {t['wall']:6.1f} s  user {t['user']:6.1f} s"
                      f"  sys {t['sys']:5.1f} s", flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    med = {k: {m: statistics.median(t[m] for t in v) for m in ("wall", "user", "sys")}
           for k, v in times.items()}
    for k, m in med.items():
        print(f"median {k:>18}: wall {m['wall']:6.1f} s  user {m['user']:6.1f} s  sys {m['sys']:5.1f} s")
    ratio = med[first]["wall"] / med[second]["wall"]
    cpu = ((med[first]["user"] + med[first]["sys"]) / (med[second]["user"] + med[second]["sys"]))
    print(f"wall ratio, {first} / {second}: {ratio:.2f}; user + system ratio: {cpu:.2f}")
    if a.compare:
        same = matrices.get(first) == matrices.get(second)
        print(f"accuracy matrices (R, R_til) bit-identical: {same}")
    return med


if __name__ == "__main__":
    main()
