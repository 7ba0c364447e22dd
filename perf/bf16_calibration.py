"""float32 against bfloat16 autocast on the CPU, paired, on the calibration stream.

For every method and seed, runs ``clmerge run`` twice in child processes (one CPU
thread each, niced): once at the default precision (``amp=auto``: float32 on the CPU)
and once with ``--set amp=bf16`` (torch's CPU autocast on the training and evaluation
forwards), alternating which of the pair goes first from one seed to the next so that a
drift of the machine's load falls on both. Each pair's accuracy (class- and
task-incremental A_last, in points), wall seconds (the run's own
``provenance.wall_seconds``, imports excluded) and CPU seconds (the child's user + system
time) are compared:

    diff    = bf16 - fp32 (points),      speed-up = fp32 CPU seconds / bf16 CPU seconds

and the decision rule of the study is applied to the means over every pair: bf16
becomes the quick profile's setting only if every method's mean |diff| (class- and
task-incremental) is at most 0.5 points and the overall speed-up (total fp32 CPU seconds /
total bf16 CPU seconds) is at least 1.5. Writes ``<prefix>.csv`` (one row per pair) and
``<prefix>.md`` (the table, the machine's load before and after, and the decision),
after every pair.

    .venv/bin/python perf/bf16_calibration.py [--methods seq joint nmc] [--seeds 0 1 2]
        [--benchmark split_glyphs_calibration] [--prefix data/calibration/bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
MAX_DIFF_POINTS = 0.5
MIN_SPEEDUP = 1.5


def run_once(method: str, seed: int, benchmark: str, amp: str | None, out: Path) -> dict:
    """Run one config in a child process and return its result dict."""
    args = [sys.executable, "-m", "clmerge.cli", "run", "--method", method, "--profile",
            "quick", "--benchmark", benchmark, "--seed", str(seed), "--out", str(out),
            "--force", "--quiet"]
    if amp:
        args += ["--set", f"amp={amp}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["nice", "-n", "10", *args], env=env, check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    files = sorted(out.glob(f"{method}-{benchmark}-s{seed}-*.json"), key=os.path.getmtime)
    result = json.loads(files[-1].read_text())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["cpu_seconds"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    for f in files:
        f.unlink()
    return result


def row_of(result: dict) -> dict:
    m = result["metrics"]
    return {"cil": 100 * m["cil"]["A_last"], "til": 100 * m["til"]["A_last"],
            "seconds": result["provenance"]["wall_seconds"], "cpu": result["cpu_seconds"]}


def decide(df: pd.DataFrame) -> tuple[bool, pd.DataFrame, float]:
    """(adopt, per-method means, overall speed-up) under the study's rule."""
    per = df.groupby("method").agg(pairs=("seed", "size"), cil_diff=("cil_diff", "mean"),
                                   til_diff=("til_diff", "mean"),
                                   fp32_cpu=("fp32_cpu", "sum"), bf16_cpu=("bf16_cpu", "sum"),
                                   fp32_s=("fp32_s", "sum"), bf16_s=("bf16_s", "sum"))
    per["cpu_speedup"] = per["fp32_cpu"] / per["bf16_cpu"]
    per["wall_speedup"] = per["fp32_s"] / per["bf16_s"]
    speedup = df["fp32_cpu"].sum() / df["bf16_cpu"].sum()
    ok_acc = bool((per[["cil_diff", "til_diff"]].abs() <= MAX_DIFF_POINTS).all().all())
    return ok_acc and speedup >= MIN_SPEEDUP, per, speedup


def load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=["seq", "joint", "nmc"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--benchmark", default="split_glyphs_calibration")
    ap.add_argument("--prefix", default=str(ROOT / "data" / "calibration" / "bf16"))
    a = ap.parse_args(argv)
    load_before = load()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for i, seed in enumerate(a.seeds):
            for method in a.methods:
                order = ["fp32", "bf16"] if i % 2 == 0 else ["bf16", "fp32"]
                got = {}
                for prec in order:
                    got[prec] = row_of(run_once(method, seed, a.benchmark,
                                                "bf16" if prec == "bf16" else None, out))
                r = {"method": method, "seed": seed, "first": order[0]}
                for prec in ("fp32", "bf16"):
                    r[f"{prec}_cil"], r[f"{prec}_til"] = got[prec]["cil"], got[prec]["til"]
                    r[f"{prec}_s"] = got[prec]["seconds"]
                    r[f"{prec}_cpu"] = got[prec]["cpu"]
                r["cil_diff"] = r["bf16_cil"] - r["fp32_cil"]
                r["til_diff"] = r["bf16_til"] - r["fp32_til"]
                r["speedup"] = r["fp32_s"] / r["bf16_s"]
                r["cpu_speedup"] = r["fp32_cpu"] / r["bf16_cpu"]
                rows.append(r)
                print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in r.items()), flush=True)
                write(pd.DataFrame(rows), a, load_before)
    return pd.DataFrame(rows)


def write(df: pd.DataFrame, a, load_before: str) -> None:
    """Write the csv and the markdown table of the pairs done so far."""
    adopt, per, speedup = decide(df)
    prefix = Path(a.prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    df.round(4).to_csv(prefix.with_suffix(".csv"), index=False)
    lines = [f"# float32 against bfloat16 autocast on the CPU ({a.benchmark}, quick profile)",
             "",
             f"Command: `python perf/bf16_calibration.py --methods {' '.join(a.methods)} "
             f"--seeds {' '.join(map(str, a.seeds))} --benchmark {a.benchmark}`",
             f"(one thread per run, nice 10; load average before {load_before}, after {load()}).",
             "Accuracy: A_last in points; `_s`: the run's wall seconds, imports excluded; "
             "`_cpu`: the child process's CPU seconds (user + system, imports included), "
             "which a shared machine's load disturbs less than wall time.",
             "", df.round(2).to_markdown(index=False), "", "Per method (means of the "
             "differences, sums of the seconds):", "", per.round(3).to_markdown(), "",
             f"Overall speed-up (total fp32 CPU s / total bf16 CPU s): {speedup:.2f}.",
             f"Rule: adopt bf16 if every method's mean |difference| <= {MAX_DIFF_POINTS} "
             f"points and the speed-up >= {MIN_SPEEDUP}.",
             f"Decision: {'adopt bf16 (from the next sweep)' if adopt else 'keep float32'}."]
    prefix.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-3:]), flush=True)


if __name__ == "__main__":
    main()
