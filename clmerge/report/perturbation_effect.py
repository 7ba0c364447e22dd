"""Where P&M's training-time perturbation acts: each perturbation against none, paired by
seed, on what it can trade (the loss it trains at, the task just learned, the old tasks,
forgetting).

P&M (arXiv 2505.22389) trains each task at points theta + s e Delta, Delta the growing
task vector, s drawn from {0, +1, -1}; its ablation draws the direction from a Gaussian
instead, rescaled to |Delta| on every weight. Claims P5 (P&M against no perturbation) and
P6 (against the Gaussian ablation) compare final accuracy only. This table splits that
difference into its parts, from the result files alone (nothing is computed here):

- *training loss*: the mean over all of a task's steps of the loss at the sampled point
  (a third of P&M's steps are at the unperturbed point), mean over tasks. How much higher
  it is than without perturbation measures how curved the loss is along the perturbed
  direction at distance e |Delta|;
- *task just learned*: task-incremental accuracy on task t right after its merge, mean
  over tasks (plasticity, as the merged model keeps it);
- *old tasks*: task-incremental accuracy on tasks 1..t-1 right after merge t, mean over
  t >= 2;
- *TIL forgetting* and *CIL forgetting*, as in every result (points);
- *final accuracy*: class-incremental A_last, the metric of P5 and P6.

Each cell is the mean paired difference (perturbation - none) over the seeds that have
both runs, with its 95% t-interval (:mod:`clmerge.report.statistics`).

:func:`claims_without` puts P&M's claims against other methods (a = ``pm`` on the
final-accuracy metric, b not a variant of P&M) next to the same
comparison with P&M's merge alone (a = P&M without perturbation): how much of each
comparison is the perturbation's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from clmerge.experiment.results import read_result
from clmerge.report import findings, statistics
from clmerge.report.names import readable

BASE = "pm[perturbation=none]"
PERTURBATIONS = {"along the task vector": "pm", "Gaussian noise": "pm[perturbation=gaussian]"}


@dataclass(frozen=True)
class Quantity:
    label: str
    unit: str
    digits: int
    of_run: Callable[[dict], float]


def _mean_over_tasks(values) -> float:
    vals = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _training_loss(r: dict) -> float:
    return _mean_over_tasks(float(np.mean(t["losses"])) if t.get("losses") else None
                            for t in r.get("tasks", []))


def _just_learned(r: dict) -> float:
    R = r["R_til"]
    return 100.0 * _mean_over_tasks(R[t][t] for t in range(len(R)))


def _old_tasks(r: dict) -> float:
    R = r["R_til"]
    return 100.0 * _mean_over_tasks(
        float(np.mean([R[t][j] for j in range(t)])) for t in range(1, len(R)))


QUANTITIES = (
    Quantity("training loss at the sampled points", "nats", 3, _training_loss),
    Quantity("task just learned, after its merge (TIL)", "points", 1, _just_learned),
    Quantity("old tasks, after each merge (TIL)", "points", 1, _old_tasks),
    Quantity("TIL forgetting", "points", 1,
             lambda r: 100.0 * r["metrics"]["til"]["forgetting"]),
    Quantity("CIL forgetting", "points", 1,
             lambda r: 100.0 * r["metrics"]["cil"]["forgetting"]),
    Quantity("final accuracy (CIL A_last)", "points", 1,
             lambda r: 100.0 * r["metrics"]["cil"]["A_last"]),
)


def per_run(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run of P&M and its two ablations in ``df`` (a frame with ``variant``,
    ``seed`` and ``path``): each quantity's value, read from the run's file."""
    wanted = {BASE, *PERTURBATIONS.values()}
    rows = []
    for _, run in df[df["variant"].isin(wanted)].iterrows():
        r = read_result(run["path"])
        row = {"variant": run["variant"], "seed": int(run["seed"])}
        row.update({q.label: q.of_run(r) for q in QUANTITIES})
        rows.append(row)
    return pd.DataFrame(rows, columns=["variant", "seed"] + [q.label for q in QUANTITIES])


def intervals(df: pd.DataFrame) -> dict[str, dict[str, statistics.Interval]]:
    """``{perturbation: {quantity: Interval of (perturbation - none) over seeds}}``."""
    runs = per_run(df)
    base = runs[runs["variant"] == BASE].set_index("seed")
    out = {}
    for name, variant in PERTURBATIONS.items():
        other = runs[runs["variant"] == variant].set_index("seed")
        out[name] = {q.label: statistics.paired_interval(other[q.label], base[q.label])
                     for q in QUANTITIES}
    return out


def table(runs_by_budget: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Rows: the quantities (with their unit); columns: per budget with P&M's ablations,
    each perturbation - none as mean [95% interval] (seeds in the header)."""
    out = pd.DataFrame(index=pd.Index([f"{q.label} ({q.unit})" for q in QUANTITIES],
                                      name="perturbation − none"))
    for budget, df in runs_by_budget.items():
        for name, ivs in intervals(df).items():
            n = max(iv.n for iv in ivs.values())
            if n == 0:
                continue
            out[f"{budget}: {name} ({n} seeds)"] = [ivs[q.label].text(q.digits)
                                                   for q in QUANTITIES]
    return out


def _flat_noise(ivs: Mapping[str, Mapping[str, statistics.Interval]]) -> bool:
    """Whether the Gaussian ablation's loss increase is under a quarter of P&M's (both
    over at least two seeds): then the loss is far more curved along the task vector."""
    loss = QUANTITIES[0].label
    along, noise = ivs["along the task vector"][loss], ivs["Gaussian noise"][loss]
    return (along.n >= 2 and noise.n >= 2 and abs(along.mean) > 0
            and abs(noise.mean) < 0.25 * abs(along.mean))


def clause(df: pd.DataFrame | None) -> str:
    """One sentence for the page's answer, only when :func:`_flat_noise` holds (else
    "", also for no runs): the Gaussian ablation is close to no perturbation, so P6
    repeats P5."""
    if df is None or not len(df):
        return ""
    ivs = intervals(df)
    if not _flat_noise(ivs):
        return ""
    loss = QUANTITIES[0]
    return (f"P6 repeats P5: Gaussian noise of P&M's size changes the training loss by "
            f"{ivs['Gaussian noise'][loss.label].text(loss.digits)} nats against P&M's "
            f"{ivs['along the task vector'][loss.label].text(loss.digits)}, so it is close to "
            "no perturbation (*What P&M's perturbation trades*, below).")


def reading(df: pd.DataFrame, budget: str) -> str:
    """One paragraph on ``budget``'s runs: what the perturbation along the task vector
    costs and saves, next to the Gaussian ablation, each figure a paired mean [95%
    interval]; the relative curvature is stated only when the Gaussian ablation's loss
    increase is under a quarter of P&M's."""
    ivs = intervals(df)
    along, noise = ivs["along the task vector"], ivs["Gaussian noise"]
    loss, own, cil_f, final = (q.label for q in (QUANTITIES[0], QUANTITIES[1], QUANTITIES[4],
                                                 QUANTITIES[5]))
    if along[final].n < 2 or noise[final].n < 2:
        return (f"At the {budget} budget fewer than two seeds have P&M with and without its "
                "perturbation: nothing to read yet.")

    def fig(iv, q):
        return iv.text(next(x.digits for x in QUANTITIES if x.label == q))

    text = (f"At the {budget} budget ({along[final].n} seeds), training along the task vector "
            f"changes the loss at the sampled points by {fig(along[loss], loss)} nats, "
            f"the accuracy on the task just learned by {fig(along[own], own)} points and "
            f"class-incremental forgetting by {fig(along[cil_f], cil_f)}; final accuracy moves "
            f"by {fig(along[final], final)}. Gaussian noise of the same size per weight "
            f"changes the loss by {fig(noise[loss], loss)} nats and final accuracy by "
            f"{fig(noise[final], final)}.")
    if _flat_noise(ivs):
        # a ratio only when the noise's own increase is told apart from 0
        ratio = (along[loss].mean / noise[loss].mean if noise[loss].excludes_zero()
                 and noise[loss].mean > 0 else float("inf"))
        more = f"about {ratio:.0f} times" if np.isfinite(ratio) else "far"
        text += (f" The loss is {more} more curved along the task vector than in a random "
                 "direction of the same length, so the Gaussian ablation is close to no "
                 "perturbation at all, and P6 (P&M against it) follows P5 (P&M against none).")
    return text


def claims_without(claims: pd.DataFrame, runs_by_budget: Mapping[str, pd.DataFrame]
                   ) -> pd.DataFrame:
    """Rows: the claims of P&M against another method on final accuracy (``a`` is
    ``pm``, ``b`` neither a variant of P&M, whose difference would then mix two
    switches, nor a best-of choice); columns per budget with
    runs: the claim's difference as tested (P&M) and the same with P&M without
    perturbation in its place, each mean [95% interval] over the seeds with both runs
    ("–" where a variant has no runs)."""
    b = claims["b"].fillna("")
    mine = claims[(claims["a"] == "pm") & (claims["metric"] == "cil_A_last") & (b != "")
                  & ~b.str.startswith("pm") & ~b.str.startswith("best:")]
    swapped = mine.assign(a=BASE)
    out = pd.DataFrame(index=pd.Index(list(mine["id"]), name="claim"))
    out["compared"] = [f"P&M − {readable(b)}" for b in mine["b"]]
    for budget, df in runs_by_budget.items():
        if not len(df):
            continue
        for label, frame in (("P&M", mine), ("without perturbation", swapped)):
            long = findings.evaluate(frame, {budget: df}).set_index("id")
            out[f"{budget}: {label}"] = [
                "–" if long.loc[cid, "verdict"] == findings.NOT_RUN
                else findings.ours_cell(long.loc[cid]) for cid in out.index]
    return out
