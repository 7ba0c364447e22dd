"""The chapter-3/5/6 report functions against brute force on real smoke results."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from clmerge.experiment.results import read_result  # noqa: E402
from clmerge.report import benchmark_files, narrative, plots, start_diagnostics, study, tables  # noqa: E402


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    d = tmp_path_factory.mktemp("results")
    return study.ensure_results(["seq", "trm", "trm[trajectory=false]"], "smoke", seeds=[0, 1],
                                results_dir=d, workers=1)


def test_ensure_results_keeps_the_requested_spelling(frame):
    assert set(frame["variant"]) == {"seq", "trm", "trm[trajectory=false]"}


def test_task_frame_matches_the_accuracy_matrices(frame):
    tasks = start_diagnostics.task_frame(frame)
    assert len(tasks) == sum(len(read_result(p)["tasks"]) for p in frame["path"])
    for _, row in tasks.iterrows():
        r = read_result(row["path"])
        t = row["task"] - 1
        assert row["til_current"] == r["R_til"][t][t]
        old = [r["R_til"][t][j] for j in range(t)]
        assert (np.isnan(row["til_old"]) if not old else row["til_old"] == pytest.approx(np.mean(old)))
        rec = r["tasks"][t]
        assert row["dense_grad_norm_first_mean"] == pytest.approx(np.mean(rec["dense_grad_norms_first"]))


def test_first_steps_frame_has_every_recorded_step(frame):
    steps = start_diagnostics.first_steps_frame(frame)
    expected = sum(len(t["losses_first"]) for p in frame["path"] for t in read_result(p)["tasks"])
    assert len(steps) == expected
    assert steps["step"].min() == 1 and (steps["dense_grad_norm"] > 0).all()


def test_responsiveness_ratio_is_the_per_seed_ratio_of_means(frame):
    tasks = start_diagnostics.task_frame(frame)
    table = start_diagnostics.responsiveness(tasks)
    sub = tasks[tasks["variant"] == "seq"]
    ratios = [sub[(sub.seed == s) & (sub.task > 1)]["dense_grad_norm_first_mean"].mean()
              / sub[(sub.seed == s) & (sub.task == 1)]["dense_grad_norm_first_mean"].iloc[0]
              for s in (0, 1)]
    assert table.loc["seq", "ratio"] == pytest.approx(np.mean(ratios), abs=1e-3)
    text = narrative.responsiveness_verdict(table)
    assert text.count("\n") == len(table) - 1 and "sequential LoRA:" in text


def test_cost_per_task_and_merge_ratio(frame):
    tasks = start_diagnostics.task_frame(frame)
    cost = tables.cost_per_task(tasks)
    sub = tasks[tasks["variant"] == "trm"]
    assert cost.loc["trm", "train ms / step"] == pytest.approx(
        (1000 * sub["train_seconds"] / sub["train_steps"]).mean(), abs=1e-3)
    assert cost.loc["trm", "persisted MiB (last task)"] == 0
    ratio = (sub["merge_seconds"] / sub["train_seconds"]).mean()
    line = narrative.merge_cost_ratio(tasks, "trm", target=ratio + 1)
    assert f"{ratio:.2f} x" in line and line.endswith("yes")
    assert narrative.merge_cost_ratio(tasks, "trm", target=ratio / 2).endswith("no")
    assert "at most" not in narrative.merge_cost_ratio(tasks, "trm")


@pytest.mark.parametrize("draw,n_axes", [
    (lambda df, tasks, steps: plots.per_task_lines(tasks, {"til_old": "a", "state_MiB": "b"}), 2),
    # task 1 (from the pretrained model) and tasks 2..T (from each method's model)
    (lambda df, tasks, steps: plots.first_steps_curves(steps), 2),
    (lambda df, tasks, steps: plots.metric_points(df, ["seq", "trm"], {"cil_A_last": "x"}, "seq"), 1),
])
def test_figures_draw_one_panel_per_column_or_task(frame, draw, n_axes):
    tasks = start_diagnostics.task_frame(frame)
    steps = start_diagnostics.first_steps_frame(frame)
    fig = draw(frame, tasks, steps)
    assert len(fig.axes) == n_axes
    assert all(ax.lines or ax.collections for ax in fig.axes)


def test_throughput_table_reads_benchmark_files(tmp_path):
    assert "not measured: no throughput" in benchmark_files.throughput_table(tmp_path)["note"][0]
    result = {"device": "NVIDIA H100 80GB HBM3", "command": ["benchmarks/throughput.py", "--device", "cuda"],
              "setting": {"batch": 256, "autocast": "bfloat16"}, "ratio_pm_over_seq": 0.98,
              "merge": {"seconds": 12.5},
              "methods": {m: {"images_per_s": ips, "peak_memory_bytes": 2**30 * 20,
                              "achieved_tflops": 300.0, "mfu": 0.3}
                          for m, ips in (("seq", 1000.0), ("pm", 980.0))}}
    (tmp_path / "throughput-h100.json").write_text(json.dumps(result))
    table = benchmark_files.throughput_table(tmp_path)
    assert table.loc[("NVIDIA H100 80GB HBM3", "pm"), "images/s"] == 980.0
    assert table.loc[("NVIDIA H100 80GB HBM3", "seq"), "peak GiB"] == 20.0
    assert table.loc[("NVIDIA H100 80GB HBM3", "seq"), "merge s"] == 12.5


@pytest.mark.parametrize("value,expected", [
    ("[0, 1]", [0, 1]), ("3", [3]), ([2], [2]), ((0, 1), [0, 1]), (None, None),
    ('["seq", "pm[eps=0.3]"]', ["seq", "pm[eps=0.3]"]),
])
def test_list_parameters_accept_papermill_text(value, expected):
    assert study.as_list(value) == expected


def test_step_time_table_reads_benchmark_files(tmp_path):
    assert "not measured: no step_time" in benchmark_files.step_time_table(tmp_path)["note"][0]
    (tmp_path / "step_time-cpu.json").write_text(json.dumps({
        "device": "cpu", "profile": "quick", "threads": 1, "iterations": 40,
        "command": ["benchmarks/step_time.py"], "median_ms": {"seq": 100.0, "pm": 101.5},
        "ratio_to_seq": {"seq": 1.0, "pm": 1.015}}))
    table = benchmark_files.step_time_table(tmp_path)
    assert table.loc[("cpu", "pm"), "ratio to seq"] == 1.015


@pytest.mark.parametrize("losses,threshold,window,expected", [
    ([1.0, 0.8, 0.6, 0.4, 0.2], 0.5, 1, 4.0),
    ([1.0, 0.8, 0.6, 0.4, 0.2], 0.5, 2, 4.0),          # (0.6 + 0.4) / 2 = 0.5: reached
    ([1.0, 0.8, 0.6, 0.4, 0.2], 0.45, 2, 5.0),         # ... 0.5 is not; (0.4 + 0.2) / 2 is
    ([1.0, 0.8, 0.6, 0.4, 0.2], 0.1, 1, float("nan")),  # never reached
    ([0.3, 2.0, 2.0], 0.5, 3, 1.0),                    # the first step alone already counts
    ([1.0, 0.0, 1.0, 0.0], 0.5, 2, 2.0),
])
def test_steps_to_loss_against_a_brute_force_window(losses, threshold, window, expected):
    got = start_diagnostics.steps_to_loss(losses, threshold, window)
    brute = next((s for s in range(1, len(losses) + 1)
                  if np.mean(losses[max(0, s - window):s]) <= threshold), float("nan"))
    assert (np.isnan(got) and np.isnan(expected)) or got == expected
    assert (np.isnan(got) and np.isnan(brute)) or got == brute


def test_every_training_step_loss_is_recorded_and_the_summary_pairs_seeds(frame):
    for p in frame["path"]:
        for rec in read_result(p)["tasks"]:
            assert len(rec["losses"]) == rec["train_steps"]
            assert rec["losses"][:len(rec["losses_first"])] == rec["losses_first"]
    sl = start_diagnostics.steps_to_loss_frame(frame, threshold=0.6, window=3, k=10)
    assert len(sl) == sum(len(read_result(p)["tasks"]) for p in frame["path"])
    summary = start_diagnostics.steps_to_loss_summary(sl)
    assert summary.loc["seq", "ratio to seq"] == pytest.approx(1.0)
    later = sl[sl.task > 1].assign(s=lambda d: d.steps_to_loss.fillna(d.train_steps))
    per_seed = later.groupby(["variant", "seed"])["s"].mean()
    ratio = np.mean([per_seed["trm", s] / per_seed["seq", s] for s in (0, 1)])
    assert summary.loc["trm", "ratio to seq"] == pytest.approx(ratio, abs=1e-3)


@pytest.fixture(scope="module")
def pm_frame(tmp_path_factory):
    d = tmp_path_factory.mktemp("pm_results")
    return study.ensure_results(["pm", "pm[fisher_normalize=trace]"], "smoke", seeds=[0, 1, 2],
                                results_dir=d, workers=1)


def test_fisher_estimator_tables_against_brute_force(pm_frame):
    from scipy import stats

    from clmerge.report import fisher_estimators as fe

    variants = ["pm", "pm[fisher_normalize=trace]"]
    summary = fe.summary_table(pm_frame, variants)
    assert list(summary.index) == variants and (summary["seeds"] == 3).all()
    by = {v: pm_frame[pm_frame["variant"] == v].set_index("seed")["cil_A_last"] * 100
          for v in variants}
    diff = (by[variants[1]] - by[variants[0]]).sort_index()
    half = stats.t.ppf(0.975, 2) * diff.std(ddof=1) / np.sqrt(3)
    expected = f"{diff.mean():+.1f} [{diff.mean() - half:+.1f}, {diff.mean() + half:+.1f}]"
    assert summary.loc[variants[1], "class-inc. minus pm (paired)"] == expected
    assert summary.loc["pm", "class-inc. minus pm (paired)"] == ""
    level = by["pm"]
    assert summary.loc["pm", "class-inc. A_last (%)"] == (
        f"{level.mean():.1f} ± {stats.t.ppf(0.975, 2) * level.std(ddof=1) / np.sqrt(3):.1f}")
    # a_t and log10 tr(F_t) per task, from the result files themselves
    table = fe.coefficient_table(pm_frame, variants)
    for v in variants:
        files = [read_result(p) for p in pm_frame.loc[pm_frame["variant"] == v, "path"]]
        for t in range(len(files[0]["tasks"])):
            a = [f["tasks"][t]["coefficient"] for f in files]
            assert table.loc[(v, t + 1), "a_t"].startswith(f"{np.mean(a):.2f}")


def test_halfway_loss_is_the_median_over_later_tasks_of_the_window_ending_halfway():
    tasks = [{"losses": [9.0] * 10},                       # task 1: never counted
             {"losses": list(np.arange(10.0))},            # halfway = step 5: mean(0..4) = 2
             {"losses": list(np.arange(9.0) * 2)},         # 9 steps, halfway = step 5: mean(0,2,..,8) = 4
             {"losses": [1.0, 3.0]},                       # halfway = step 1: 1
             {"losses_first": [0.5]}]                      # no per-step losses: skipped
    assert start_diagnostics.halfway_loss({"tasks": tasks}) == pytest.approx(2.0)
    assert start_diagnostics.halfway_loss({"tasks": tasks}, window=2) == pytest.approx(3.5)  # 3.5, 7, 1
    assert np.isnan(start_diagnostics.halfway_loss({"tasks": tasks[:1]}))


@pytest.mark.parametrize("profile,benchmark,override,expected", [
    ("quick", None, None, 0.16),             # the profile's benchmark, split_glyphs
    ("quick", "split_mnist5k", None, 0.3),   # the profile's default entry
    ("quick", "split_glyphs", 0.05, 0.05),   # a chapter parameter wins
    ("smoke", None, None, start_diagnostics.DEFAULT_LOSS_THRESHOLD),
])
def test_loss_threshold_comes_from_the_profile(profile, benchmark, override, expected):
    assert start_diagnostics.loss_threshold(profile, benchmark, override) == expected


def test_the_profiles_threshold_is_the_rule_on_the_committed_calibration_run():
    from pathlib import Path

    from clmerge.experiment.config import make_config
    from clmerge.experiment.results import result_path

    root = Path(__file__).resolve().parents[1] / "data" / "calibration" / "results"
    path = result_path(make_config("seq", "split_glyphs_calibration", "quick", 0), root)
    value = start_diagnostics.halfway_loss(read_result(path))
    assert round(value, 2) == start_diagnostics.loss_threshold("quick", "split_glyphs")


def test_paired_table_against_brute_force(pm_frame):
    from scipy import stats

    table = tables.paired(pm_frame, "pm", ["pm", "pm[fisher_normalize=trace]", "no_such"])
    assert len(table) == 1 and table["seeds"].tolist() == [3]
    a = pm_frame[pm_frame["variant"] == "pm[fisher_normalize=trace]"].set_index("seed")
    b = pm_frame[pm_frame["variant"] == "pm"].set_index("seed")
    for col, name in (("cil_A_last", "final class-incremental accuracy"),
                      ("til_A_last", "final task-incremental accuracy")):
        d = (100 * (a[col] - b[col])).sort_index()
        h = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
        assert table.iloc[0][name] == f"{d.mean():+.1f} [{d.mean() - h:+.1f}, {d.mean() + h:+.1f}]"
    assert tables.paired(pm_frame, "pm", ["no_such"]).empty
