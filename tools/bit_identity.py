"""Rerun methods and compare their accuracy matrices bit for bit with reference results.

    python tools/bit_identity.py --reference REF_DIR --out OUT_DIR [--profile smoke]
        [--benchmark split_glyphs] [--methods seq,average,...] [--seed 0] [--compare-only]

Each method is run through the command line (``python -m clmerge.cli run``, one process
per run, ``OMP_NUM_THREADS=1``) into ``OUT_DIR``, unless ``--compare-only``. Then every
result of ``OUT_DIR`` is paired with the result of ``REF_DIR`` of the same method,
benchmark and seed, and their ``R`` and ``R_til`` matrices are compared entry by entry
with exact float equality (``None`` equal to ``None`` only). One line per method says
``identical`` or names the first differing entry; the exit status is 1 when any matrix
differs or a result is missing on either side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

METHODS = ("seq", "average", "ties", "pm", "trm", "nmc")
MATRICES = ("R", "R_til")


def result_file(folder: Path, method: str, benchmark: str, seed: int) -> Path | None:
    """The one result file of ``method`` on ``benchmark`` (a glob: ``*``, any) with
    ``seed`` in ``folder``; None when there is none or more than one."""
    found = sorted(folder.glob(f"{method}-{benchmark}-s{seed}-*.json"))
    return found[0] if len(found) == 1 else None


def first_difference(a, b) -> str | None:
    """Where two matrices (lists of rows) first differ, exactly; None: identical."""
    if len(a) != len(b):
        return f"{len(a)} rows against {len(b)}"
    for i, (ra, rb) in enumerate(zip(a, b)):
        if len(ra) != len(rb):
            return f"row {i}: {len(ra)} entries against {len(rb)}"
        for j, (x, y) in enumerate(zip(ra, rb)):
            same = (x is None and y is None) or (
                x is not None and y is not None and float(x) == float(y)
                and float(x).hex() == float(y).hex())
            if not same:
                return f"[{i}][{j}]: {x!r} against {y!r}"
    return None


def compare(reference: Path, out: Path, methods, benchmark: str, seed: int) -> list[str]:
    """One line per method; a line starting with 'identical' means every matrix matched."""
    lines = []
    for m in methods:
        ref, new = (result_file(reference, m, benchmark, seed),
                    result_file(out, m, benchmark, seed))
        if ref is None or new is None:
            side = "reference" if ref is None else "rerun"
            lines.append(f"MISSING   {m}: no single {side} result")
            continue
        a, b = json.loads(ref.read_text()), json.loads(new.read_text())
        diffs = [f"{k} {d}" for k in MATRICES if (d := first_difference(a[k], b[k]))]
        if diffs:
            lines.append(f"DIFFERENT {m}: " + "; ".join(diffs))
        else:
            lines.append(f"identical {m}: {', '.join(MATRICES)} ({ref.name})")
    return lines


def rerun(out: Path, methods, profile: str, benchmark: str | None, seed: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for m in methods:
        cmd = [sys.executable, "-m", "clmerge.cli", "run", "--method", m, "--profile", profile,
               "--seed", str(seed), "--out", str(out)]
        if benchmark:
            cmd += ["--benchmark", benchmark]
        print("running", " ".join(cmd[2:]), flush=True)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{m} failed (exit {done.returncode}): {done.stderr[-2000:]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--profile", default="smoke")
    p.add_argument("--benchmark", default=None,
                   help="benchmark to run (default: the profile's); results are matched on it")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare-only", action="store_true")
    a = p.parse_args(argv)
    methods = [m for m in a.methods.split(",") if m]
    if not a.compare_only:
        a.out.mkdir(parents=True, exist_ok=True)
        rerun(a.out, methods, a.profile, a.benchmark, a.seed)
    lines = compare(a.reference, a.out, methods, a.benchmark or "*", a.seed)
    print("\n".join(lines))
    return 0 if all(line.startswith("identical") for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
