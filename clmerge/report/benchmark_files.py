"""Benchmark figures for the cost chapter: the JSON files written by
``perf/step_time.py`` (per-step time of each method against seq, side by side) and
``perf/throughput.py`` (GPU images/s, peak memory, MFU, merge time)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from clmerge.paths import data_dir
from clmerge.report.tables import labelled

# where the timing scripts' JSON files are committed (a chapter's ``benchmarks = None``)
DEFAULT_FOLDER = data_dir() / "benchmarks"
COMMAND = ".venv/bin/python perf/throughput.py --device cuda --out data/benchmarks/throughput-<gpu>.json"


def _shown(folder: Path) -> str:
    """``folder`` relative to the checkout when it is inside it."""
    try:
        return str(folder.resolve().relative_to(DEFAULT_FOLDER.parents[1]))
    except ValueError:
        return str(folder)


def throughput_table(folder: str | Path | None = None) -> pd.DataFrame:
    """One row per method per benchmark file: device, images/s, peak memory, MFU, the
    pm/seq ratio, the merge time and the command that produced it. An empty frame with
    a note when no file has been committed."""
    folder = Path(folder) if folder else DEFAULT_FOLDER
    rows = []
    for path in sorted(folder.glob("throughput*.json")):
        r = json.loads(path.read_text())
        for method, m in r["methods"].items():
            peak = m.get("peak_memory_bytes")
            mfu = m.get("mfu")
            rows.append({
                "file": path.name, "device": r["device"], "method": method,
                "batch": r["setting"]["batch"], "autocast": r["setting"]["autocast"],
                "images/s": round(m["images_per_s"], 1),
                "peak GiB": round(peak / 2**30, 2) if peak else None,
                "TFLOP/s": round(m["achieved_tflops"], 1),
                "MFU": round(mfu, 3) if isinstance(mfu, float) else mfu,
                "pm / seq images/s": round(r["ratio_pm_over_seq"], 3),
                "merge s": round(r["merge"].get("seconds", float("nan")), 2)
                if isinstance(r.get("merge"), dict) and "seconds" in r["merge"] else None,
                "command": " ".join(r["command"]),
            })
    if not rows:
        return pd.DataFrame({"note": [f"not measured: no throughput*.json in {_shown(folder)}, "
                                      f"since this build had no GPU; on a machine with one, "
                                      f"{COMMAND} writes it."]})
    return labelled(pd.DataFrame(rows).set_index(["device", "method"]))


def step_time_table(folder: str | Path | None = None) -> pd.DataFrame:
    """One row per method per ``step_time*.json``: median ms per training iteration and
    the ratio to seq measured in the same process, with the device and command."""
    folder = Path(folder) if folder else DEFAULT_FOLDER
    rows = []
    for path in sorted(folder.glob("step_time*.json")):
        r = json.loads(path.read_text())
        for method, ms in r["median_ms"].items():
            rows.append({"device": r["device"], "method": method, "profile": r["profile"],
                         "threads": r["threads"], "ms / iteration": round(ms, 2),
                         "ratio to seq": round(r["ratio_to_seq"][method], 3),
                         "iterations": r["iterations"], "command": " ".join(r["command"])})
    if not rows:
        return pd.DataFrame({"note": [f"not measured: no step_time*.json in {_shown(folder)}; run "
                                      f".venv/bin/python perf/step_time.py --methods seq pm "
                                      f"ewc lwf trm --out {folder}/step_time-cpu.json"]})
    return labelled(pd.DataFrame(rows).set_index(["device", "method"]))
