"""Result files: one JSON per run, content-addressed, atomic, checksummed.

A result lives at ``<dir>/<method>-<benchmark>-s<seed>-<confighash>.json``, where the
hash covers the full config. It is written to a temp file in the same folder and
renamed into place, so a crash never leaves a partial file; it carries a sha256 of its
own content, so a truncated or edited file is detected (:class:`CorruptResultError`)
and recomputed rather than silently used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

import pandas as pd

from clmerge.experiment.config import ExperimentConfig

SCHEMA = 1


class CorruptResultError(RuntimeError):
    """A result file exists but fails to parse or its checksum does not match."""


def result_path(cfg: ExperimentConfig, out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / f"{cfg.run_name()}.json"


def _checksum(result: dict) -> str:
    body = {k: v for k, v in result.items() if k != "checksum"}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def write_result(result: dict, path: str | os.PathLike) -> Path:
    """Write atomically (temp file + rename) with an embedded checksum."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = dict(result, schema=SCHEMA)
    result["checksum"] = _checksum(result)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(result, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_result(path: str | os.PathLike) -> dict:
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CorruptResultError(f"{path}: unreadable result file ({e})") from None
    if not isinstance(result, dict) or result.get("checksum") != _checksum(result):
        raise CorruptResultError(f"{path}: checksum mismatch (truncated or edited file)")
    return result


def iter_results(out_dir: str | os.PathLike) -> Iterable[tuple[Path, dict]]:
    for p in sorted(Path(out_dir).glob("*.json")):
        try:
            yield p, read_result(p)
        except CorruptResultError:
            continue


def load_results(out_dir: str | os.PathLike, **where) -> pd.DataFrame:
    """A tidy frame, one row per run: config columns, then each metric for the
    class-incremental (``cil_*``) and task-incremental (``til_*``) matrices.

    ``where`` filters on config columns, e.g. ``load_results(d, profile="quick")``.
    """
    rows = []
    for p, r in iter_results(out_dir):
        cfg = r["config"]
        if any(cfg.get(k) != v for k, v in where.items()):
            continue
        row = {k: v for k, v in cfg.items() if k != "method_args"}
        row["method_args"] = json.dumps(cfg.get("method_args", {}), sort_keys=True)
        row["variant"] = r.get("variant", cfg["method"])
        for proto in ("cil", "til"):
            for m, v in r["metrics"][proto].items():
                row[f"{proto}_{m}"] = v
        tasks = r.get("tasks", [])
        row["train_seconds"] = sum(t.get("train_seconds", 0.0) for t in tasks)
        row["merge_seconds"] = sum(t.get("merge_seconds", 0.0) for t in tasks)
        row["state_bytes_max"] = max((t.get("state_bytes", 0) for t in tasks), default=0)
        row["path"] = str(p)
        rows.append(row)
    return pd.DataFrame(rows)


def accuracy_long(out_dir: str | os.PathLike, **where) -> pd.DataFrame:
    """Every matrix entry as a row: run, protocol, after (i), on (j), accuracy."""
    rows = []
    for p, r in iter_results(out_dir):
        cfg = r["config"]
        if any(cfg.get(k) != v for k, v in where.items()):
            continue
        for proto, key in (("cil", "R"), ("til", "R_til")):
            for i, row in enumerate(r[key]):
                for j, acc in enumerate(row):
                    if acc is not None:
                        rows.append({"method": cfg["method"], "variant": r.get("variant", cfg["method"]),
                                     "finetune": cfg["finetune"], "seed": cfg["seed"],
                                     "benchmark": cfg["benchmark"], "protocol": proto,
                                     "after": i, "on": j, "accuracy": acc, "path": str(p)})
    return pd.DataFrame(rows)
