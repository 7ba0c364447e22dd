"""CPU and wall seconds of one seq run of glyph_renditions against one of split_glyphs,
side by side, alternating.

Each run is ``clmerge run --method seq`` (the quick profile, seed 0 by default, the
evaluation stream) in a child process with one CPU thread (``OMP_NUM_THREADS=1``), into
a temporary folder (``--force``: computed, never loaded). The benchmarks alternate,
``--rounds`` times each. Printed per run: the child's user + system CPU seconds
(``resource.getrusage(RUSAGE_CHILDREN)``; on a shared machine other processes' work is
not counted, so they are disturbed less than wall seconds), its wall seconds and its
class-incremental final accuracy; then the medians and the ratio of the CPU medians.
The child's times include starting Python and importing torch. The load average is
printed before and after.

    .venv/bin/python perf/seq_renditions_time.py [--rounds 1] [--seed 0]
        [--benchmarks glyph_renditions,split_glyphs]
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
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def timed_seq(benchmark: str, seed: int, out: str) -> dict:
    """One seq run of ``benchmark`` in a child process: CPU and wall seconds."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(HERE) + os.pathsep + env.get("PYTHONPATH", "")
    args = [sys.executable, "-m", "clmerge.cli", "run", "--method", "seq",
            "--benchmark", benchmark, "--profile", "quick", "--seed", str(seed),
            "--out", out, "--force", "--quiet"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, cwd=HERE)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    recorded = {}
    for f in Path(out).glob("seq-*.json"):
        r = json.loads(f.read_text())
        recorded = {"cil_A_last": r["metrics"]["cil"]["A_last"]}
    return {"cpu": cpu, "wall": wall, **recorded}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--benchmarks", default="glyph_renditions,split_glyphs")
    a = ap.parse_args(argv)
    names = [b.strip() for b in a.benchmarks.split(",") if b.strip()]
    if len(names) != 2 or a.rounds < 1:
        print("give two benchmarks (comma-separated) and --rounds >= 1", file=sys.stderr)
        raise SystemExit(2)
    times: dict[str, list[dict]] = {b: [] for b in names}
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for b in names:
                t = timed_seq(b, a.seed, os.path.join(tmp, f"{b}-{r}"))
                times[b].append(t)
                acc = t.get("cil_A_last")
                print(f"round {r + 1} seq {b:>17}: {t['cpu']:7.1f} CPU s, {t['wall']:7.1f} "
                      f"wall s" + ("" if acc is None else f", class-incremental A_last "
                                   f"{100 * acc:.1f}"), flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    med = {b: {k: statistics.median(t[k] for t in v) for k in ("cpu", "wall")}
           for b, v in times.items()}
    first, second = names
    for b in names:
        print(f"median seq {b}: {med[b]['cpu']:.1f} CPU s, {med[b]['wall']:.1f} wall s "
              f"({a.rounds} run{'s' if a.rounds > 1 else ''})")
    print(f"CPU seconds {first} / {second}: {med[first]['cpu'] / med[second]['cpu']:.2f}")
    return med


if __name__ == "__main__":
    main()
