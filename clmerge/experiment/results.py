"""Result files: one JSON per run, content-addressed, atomic, checksummed.

A result lives at ``<dir>/<method>-<benchmark>-s<seed>-<confighash>.json``, where the
hash covers the full config. It is written to a temp file in the same folder, fsynced
and renamed into place (:mod:`clmerge.experiment.atomic`), so a crash never leaves a
partial file; it carries a sha256 of its own content, so a truncated or edited file is
detected (:class:`CorruptResultError`) and recomputed rather than silently used. A file
that is not UTF-8, not JSON, nested too deeply, or lacks the fields every reader needs
(``config``, ``metrics``, ``R``, ``R_til``) is corrupt as well; readers of a folder skip
it with one warning line naming it, and ``get_or_run`` recomputes it.

Numbers are finite and in range: a result holding NaN or an infinity, or an accuracy
outside [0, 1] (an entry of ``R`` / ``R_til``, an ``A_*`` metric; ``forgetting`` and
``bwt`` are differences of accuracies, in [-1, 1]) is refused when written
(:class:`NonFiniteResultError`, :class:`ResultRangeError`), and such a file is corrupt
when read, as is one without ``metrics.cil.A_last`` and ``metrics.til.A_last``.

A result is read back for a config (``read_result(path, cfg)``) only if it is that
config's: its method, benchmark and seed, its stored ``config_hash`` and the hash of its
stored config must all be the config's. The hash covers ``method_args``, so it decides
the variant; the stored variant label is not compared, because a label names only the
options that differ from the defaults of the code that wrote it. A result under another
config's name is corrupt for that config: :func:`set_aside` renames it to
``<name>.json.corrupt`` (kept, never read) and the run is recomputed.

A path where a result is expected that is not a regular file (a FIFO, a device, a
folder) is :class:`NotRegularFileError`, a :class:`~clmerge.errors.ConfigError`: it is
never opened for reading, so it never blocks.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Iterable

import pandas as pd

from clmerge.experiment.atomic import (NotRegularFileError, atomic_write,  # noqa: F401
                                       check_regular, read_regular_bytes)
from clmerge.experiment.config import FIELDS, ExperimentConfig
from clmerge.experiment.metrics import pooled
from clmerge.values import short

SCHEMA = 1


class CorruptResultError(RuntimeError):
    """A result file exists but fails to parse, lacks a required field, or its checksum
    does not match."""


class NonFiniteResultError(FloatingPointError):
    """A result about to be written holds NaN or an infinity."""


class ResultRangeError(FloatingPointError):
    """A result about to be written holds an accuracy outside [0, 1] (or a difference of
    accuracies outside [-1, 1])."""


# float error allowed on a bound: a mean of accuracies of 1.0 may come out 1 + 2e-16
RANGE_TOLERANCE = 1e-9
# metrics that are differences of two accuracies; every other metric is an accuracy
DIFFERENCES = ("forgetting", "bwt")


def _out_of_range(value, low: float, high: float) -> bool:
    return (isinstance(value, bool) or not isinstance(value, (int, float))
            or not (low - RANGE_TOLERANCE <= value <= high + RANGE_TOLERANCE))


def range_problem(result: dict) -> str | None:
    """Where ``result`` holds an accuracy outside [0, 1] (a difference of accuracies
    outside [-1, 1]) or lacks ``A_last``, in words; None when it does not."""
    for key in ("R", "R_til"):
        rows = result.get(key)
        if not isinstance(rows, list):
            continue
        for i, row in enumerate(rows):
            if not isinstance(row, list):
                return f"{key}[{i}] is not a row of accuracies"
            for j, v in enumerate(row):
                if v is not None and _out_of_range(v, 0.0, 1.0):
                    return f"{key}[{i}][{j}] = {str(v)[:20]} is not an accuracy in [0, 1]"
    metrics = result.get("metrics")
    if not isinstance(metrics, dict):
        return None
    for proto in ("cil", "til"):
        values = metrics.get(proto)
        if not isinstance(values, dict):
            continue
        if "A_last" not in values:
            return f"metrics.{proto} has no A_last"
        for name, v in values.items():
            if v is None and name != "A_last":
                continue
            low = -1.0 if name in DIFFERENCES else 0.0
            if _out_of_range(v, low, 1.0):
                return (f"metrics.{proto}.{name} = {str(v)[:20]} is outside "
                        f"[{low:g}, 1]")
    return None


def _nonfinite_at(value, where: str = "") -> str | None:
    """The path of the first non-finite float in a JSON-like value, or None."""
    stack = [(value, where)]
    while stack:
        v, at = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return at or "the top level"
        if isinstance(v, dict):
            stack.extend((x, f"{at}.{k}" if at else str(k)) for k, x in v.items())
        elif isinstance(v, (list, tuple)):
            stack.extend((x, f"{at}[{i}]") for i, x in enumerate(v))
    return None


def _reject_constant(name: str):
    raise ValueError(f"non-finite number {name}")


def result_path(cfg: ExperimentConfig, out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / f"{cfg.run_name()}.json"


def checksum(result: dict) -> str:
    """The sha256 a result file carries of its own content (every key but ``checksum``)."""
    body = {k: v for k, v in result.items() if k != "checksum"}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def write_result(result: dict, path: str | os.PathLike) -> Path:
    """Write atomically and durably (temp file, fsync, rename, fsync of the folder) with
    an embedded checksum; mode 0644 less the umask. A result holding NaN or an infinity
    (:class:`NonFiniteResultError`) or an accuracy out of range or no ``A_last``
    (:class:`ResultRangeError`) is refused and nothing is written."""
    path = Path(path)
    bad = _nonfinite_at(result)
    if bad is not None:
        raise NonFiniteResultError(f"the result {path.name} holds a non-finite number at "
                                   f"{bad}; it was not written")
    problem = range_problem(result)
    if problem is not None:
        raise ResultRangeError(f"the result {path.name} is not valid ({problem}); it was "
                               f"not written")
    path.parent.mkdir(parents=True, exist_ok=True)
    result = dict(result, schema=SCHEMA)
    result["checksum"] = checksum(result)
    text = json.dumps(result, indent=1, sort_keys=True, allow_nan=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"),
                 size=len(text.encode("utf-8")))
    return path


REQUIRED = {"config": dict, "metrics": dict, "R": list, "R_til": list}


def read_checked(path: str | os.PathLike) -> dict:
    """The checksummed JSON object in ``path`` (a result or a cached analysis);
    :class:`CorruptResultError` (one line naming the file and the reason) when it cannot
    be read or its checksum does not match."""
    try:
        text = read_regular_bytes(path, "a result file").decode("utf-8")
        result = json.loads(text, parse_constant=_reject_constant)
    except NotRegularFileError:
        raise
    except UnicodeDecodeError as e:
        raise CorruptResultError(f"{path}: unreadable result file (not UTF-8 at byte "
                                 f"{e.start})") from None
    except RecursionError:
        raise CorruptResultError(f"{path}: unreadable result file (nested too deeply)") from None
    except (OSError, ValueError) as e:
        reason = " ".join(str(e).split())[:120]
        raise CorruptResultError(f"{path}: unreadable result file ({reason})") from None
    if not isinstance(result, dict):
        raise CorruptResultError(f"{path}: not a result (a JSON {type(result).__name__})")
    try:
        ok = result.get("checksum") == checksum(result)
    except (RecursionError, TypeError, ValueError):
        ok = False
    if not ok:
        raise CorruptResultError(f"{path}: checksum mismatch (truncated or edited file)")
    return result


def read_result(path: str | os.PathLike, cfg: ExperimentConfig | None = None) -> dict:
    """The run result in ``path``: :func:`read_checked`, and it must hold ``config``,
    ``metrics`` (``cil`` and ``til``, each with ``A_last``), ``R`` and ``R_til``, every
    number in range; with ``cfg``, it must be ``cfg``'s result (module docstring)."""
    result = read_checked(path)
    for key, typ in REQUIRED.items():
        if not isinstance(result.get(key), typ):
            raise CorruptResultError(f"{path}: not a result (no {key!r} {typ.__name__})")
    metrics = result["metrics"]
    if not all(isinstance(metrics.get(p), dict) for p in ("cil", "til")):
        raise CorruptResultError(f"{path}: not a result (no 'cil' and 'til' metrics)")
    if not isinstance(result["config"].get("method"), str):
        raise CorruptResultError(f"{path}: not a result (no method in its config)")
    problem = range_problem(result)
    if problem is not None:
        raise CorruptResultError(f"{path}: not a valid result ({problem})")
    if cfg is not None:
        other = _other_config(result, cfg)
        if other is not None:
            raise CorruptResultError(f"{path}: holds the result of another config ({other})")
    return result


def stored_config_hash(config: dict) -> str | None:
    """The hash of a result's stored config, as :meth:`ExperimentConfig.config_hash`
    computes it (None when it names a setting that does not exist)."""
    if not set(config) <= set(FIELDS):
        return None
    try:
        return ExperimentConfig(**config).config_hash()
    except (TypeError, ValueError):
        return None


def _other_config(result: dict, cfg: ExperimentConfig) -> str | None:
    """How ``result`` is not ``cfg``'s, in words; None when it is."""
    stored = result["config"]
    for key in ("method", "benchmark", "seed"):
        if stored.get(key) != getattr(cfg, key):
            return f"{key} {short(stored.get(key))}, not {getattr(cfg, key)!r}"
    want = cfg.config_hash()
    if result.get("config_hash") != want or stored_config_hash(stored) != want:
        return f"config hash {short(result.get('config_hash'))}, not {want!r}"
    return None


def set_aside(path: str | os.PathLike) -> Path | None:
    """Rename a corrupt result to ``<name>.corrupt`` (replacing an older one), so that it
    is kept but never read again; the new path, or None when it could not be moved."""
    path = Path(path)
    target = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, target)
    except OSError:
        return None
    return target


def warn_skipped(error: CorruptResultError) -> None:
    """The one warning line of a result file a reader skips."""
    print(f"clmerge: warning: skipping {error}", file=sys.stderr, flush=True)


def iter_results(out_dir: str | os.PathLike) -> Iterable[tuple[Path, dict]]:
    for p in sorted(Path(out_dir).glob("*.json")):
        try:
            yield p, read_result(p)
        except CorruptResultError as e:
            warn_skipped(e)
        except NotRegularFileError as e:
            warn_skipped(CorruptResultError(str(e)))


def load_results(out_dir: str | os.PathLike, **where) -> pd.DataFrame:
    """A tidy frame, one row per run: config columns, then each metric for the
    class-incremental (``cil_*``) and task-incremental (``til_*``) matrices, the pooled
    ones (``*_A_last_pooled``, ``*_A_avg_pooled``) computed from the stored test sizes
    for results written before they were recorded.

    ``where`` filters on config columns, e.g. ``load_results(d, profile="quick")``.
    """
    rows = []
    for p, r in iter_results(out_dir):
        if any(r["config"].get(k) != v for k, v in where.items()):
            continue
        rows.append(result_row(p, r))
    return pd.DataFrame(rows)


def result_row(p: Path, r: dict) -> dict:
    """The row of one result in :func:`load_results`' frame."""
    cfg = r["config"]
    row = {k: v for k, v in cfg.items() if k != "method_args"}
    row["method_args"] = json.dumps(cfg.get("method_args", {}), sort_keys=True)
    row["variant"] = r.get("variant", cfg["method"])
    sizes = r.get("stream", {}).get("n_test")
    for proto, key in (("cil", "R"), ("til", "R_til")):
        metrics = dict(r["metrics"][proto])
        if sizes and "A_last_pooled" not in metrics:   # results written before pooling
            metrics.update(pooled(r[key], sizes))
        for m, v in metrics.items():
            row[f"{proto}_{m}"] = v
    tasks = r.get("tasks", [])
    row["train_seconds"] = sum(t.get("train_seconds", 0.0) for t in tasks)
    row["merge_seconds"] = sum(t.get("merge_seconds", 0.0) for t in tasks)
    row["state_bytes_max"] = max((t.get("state_bytes", 0) for t in tasks), default=0)
    row["path"] = str(p)
    return row


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
