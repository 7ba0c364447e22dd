"""`clmerge sweep`: grid expansion and checking, skipping finished runs, the local pool,
submitit's local executor, and the command line. Runs are tiny (smoke profile, 2
experiences: a fraction of a second each)."""

import dataclasses
import os
import signal
import queue
import re

import pytest
import yaml

import clmerge.experiment.runner as runner
from clmerge import cli
from clmerge.experiment import executors, sweep
from clmerge.errors import ConfigError
from clmerge.experiment.results import read_result, result_path
from clmerge.experiment.runner import get_or_run
from clmerge.experiment.variants import variant_label

TINY = {"n_experiences": 2}


def grid(variants=("seq", "pm"), seeds=(0,), **extra):
    g = {"profile": "smoke", "variants": list(variants), "seeds": list(seeds),
         "overrides": dict(TINY)}
    g.update(extra)
    return g


@pytest.fixture
def spy(monkeypatch):
    """The run names computed in this process (loading a result does not count)."""
    ran = []
    real = runner.run_experiment

    def run(cfg, progress=True, **kwargs):
        ran.append(cfg.run_name())
        return real(cfg, progress=progress, **kwargs)

    monkeypatch.setattr(runner, "run_experiment", run)
    return ran


def files(d):
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*"))


# ------------------------------------------------------------------------- the grid
@pytest.mark.parametrize("g,labels,seeds", [
    (grid(), ["seq", "pm"], [0, 0]),                                  # profile's seeds
    (grid(["seq", "seq_full", "pm[eps=0.3]", "magmax@ft"], [0, 1]),
     ["seq", "seq", "seq_full", "seq_full", "pm[eps=0.3]", "pm[eps=0.3]",
      "magmax@ft", "magmax@ft"], [0, 1] * 4),
    (grid(["seq", "seq"], [1, 1, 0]), ["seq", "seq"], [1, 0]),       # equal configs once
    ({"profile": "smoke", "variants": ["seq"]}, ["seq"], [0]),        # all defaults
])
def test_expand_grid_counts_and_labels(g, labels, seeds):
    cfgs = sweep.expand_grid(g)
    assert [variant_label(c) for c in cfgs] == labels
    assert [c.seed for c in cfgs] == seeds
    assert all(c.profile == "smoke" and c.benchmark == "synthetic" for c in cfgs)
    assert len({c.run_name() for c in cfgs}) == len(cfgs)
    if "overrides" in g:
        assert all(c.n_experiences == 2 for c in cfgs)


def test_grid_file_benchmarks_and_results_dir(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid(benchmarks=["synthetic", "split_digits"],
                                        results_dir=str(tmp_path / "r"))))
    g = sweep.load_grid(path)
    assert g.name == "g" and g.results_dir == tmp_path / "r"
    assert g.executor == sweep.Executor("local", None, {})
    cfgs = sweep.expand_grid(g)
    assert [(c.benchmark, c.method) for c in cfgs] == [
        ("synthetic", "seq"), ("synthetic", "pm"), ("split_digits", "seq"), ("split_digits", "pm")]
    assert sweep.load_grid(path, "slurm", 3).executor == sweep.Executor("slurm", 3, {})


@pytest.mark.parametrize("change,message", [
    ({"variant": ["seq"]}, "unknown grid key 'variant'; valid keys: profile, benchmarks"),
    ({"variants": ["seq", "sqe"]}, "variant 'sqe': unknown method 'sqe'; valid methods: seq"),
    ({"variants": ["pm[eps=0.3"]}, "cannot read variant"),
    ({"variants": ["pm[epsilon=0.3]"]}, "unknown option pm.epsilon; valid options of 'pm'"),
    ({"variants": []}, "'variants' must be a non-empty list"),
    ({"profile": "quik"}, "unknown profile 'quik'; valid profiles"),
    ({"benchmarks": ["mnist"]}, "^unknown benchmark 'mnist'; valid benchmarks: synthetic"),
    ({"seeds": 0}, "'seeds' must be a non-empty list of integers"),
    ({"overrides": {"epochs": -1}}, "'epochs' must be >= 1"),
    ({"overrides": {"epoch": 1}}, "unknown setting 'epoch'; valid settings"),
    ({"overrides": {"seed": 3}}, "overrides cannot set 'seed'"),
    ({"executor": {"kind": "slrum"}}, "unknown executor 'slrum'; valid executors: local"),
    ({"executor": {"workers": 0}}, "workers must be a positive integer"),
    ({"executor": {"cores": 2}}, "unknown executor key 'cores'; valid keys: kind, workers"),
    ({"executor": {"slurm": {"partiton": "gpu"}}}, "unknown slurm parameter 'partiton'; valid"),
    ({"executor": {"slurm": {"timeout_min": "2h"}}}, "'timeout_min' expects an int"),
])
def test_bad_grid_is_a_config_error_before_anything_runs(change, message, tmp_path,
                                                         monkeypatch):
    monkeypatch.setattr(runner, "run_experiment", lambda *a, **k: pytest.fail("ran"))
    g = grid()
    g.update(change)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        sweep.run_sweep(g, results_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_slurm_without_a_cluster_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))          # no sbatch, no srun
    with pytest.raises(ConfigError, match="valid executors on this machine: local"):
        sweep.run_sweep(grid(), executor="slurm", results_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_slurm_block_reaches_the_sbatch_file(tmp_path, monkeypatch):
    import submitit
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    ex = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    block = sweep.Executor("slurm", 3, {"partition": "gpu", "timeout_min": 30,
                                        "account": "lab", "cpus_per_task": 2})
    ex.update_parameters(**sweep.slurm_parameters(block, "mygrid", cuda=True))
    text = ex._executor._make_submission_file_text("python job.py", "uid")
    for line in ("--partition=gpu", "--time=30", "--account=lab", "--cpus-per-task=2",
                 "--gpus-per-node=1", "--job-name=clmerge-mygrid"):
        assert f"#SBATCH {line}\n" in text
    defaults = sweep.slurm_parameters(sweep.Executor("slurm"), "g", cuda=False)
    assert defaults == {"timeout_min": sweep.DEFAULT_TIMEOUT_MIN, "name": "clmerge-g"}


@pytest.mark.parametrize("device,gpus,workers,n_todo,expected", [
    ("cpu", [], None, 3, (min(3, executors.cpu_count()), None)),
    ("cpu", [], 1, 3, (1, None)),
    ("cuda", ["0", "1"], None, 3, (2, ["0", "1"])),          # one process per GPU
    ("cuda", ["0", "1"], None, 1, (1, ["0", "1"])),
    ("cuda", ["0", "1"], 4, 5, (4, ["0", "1"])),             # shared round robin
])
def test_local_workers(device, gpus, workers, n_todo, expected, monkeypatch):
    monkeypatch.setattr(executors, "cuda_devices", lambda: list(gpus))
    todo = sweep.expand_grid(grid(["seq"], range(n_todo), overrides={"device": device}))
    assert executors.local_workers(todo, workers) == expected


def test_pool_worker_takes_its_gpu(monkeypatch):
    q = queue.Queue()
    q.put("3")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    watched, handlers = [], []   # the worker's lifeline and Ctrl-C, recorded (not installed here)
    monkeypatch.setattr(executors.lifeline, "die_with_parent", watched.append)
    monkeypatch.setattr(executors.signal, "signal", lambda *a: handlers.append(a))
    executors._init_worker(q, 4242)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert watched == [4242]
    assert handlers == [(signal.SIGINT, signal.SIG_IGN)]


class _FakeJob:
    def __init__(self, log, cfg):
        self.log, self.cfg, self.polls = log, cfg, 0

    def done(self):
        self.polls += 1
        if self.polls == 2:
            self.log["in_flight"] -= 1
        return self.polls >= 2

    def exception(self):
        return None


def _fake_local_executor(log):
    class FakeLocalExecutor:
        def __init__(self, folder):
            self.parameters = {}

        def update_parameters(self, **kw):
            self.parameters.update(kw)

        def submit(self, fn, cfg, results_dir):
            log["in_flight"] += 1
            log["max_in_flight"] = max(log["max_in_flight"], log["in_flight"])
            log["jobs"].append((cfg.device, self.parameters.get("visible_gpus"),
                                self.parameters["timeout_min"],
                                os.environ.get("OMP_NUM_THREADS")))
            return _FakeJob(log, cfg)
    return FakeLocalExecutor


@pytest.mark.parametrize("device,workers,gpus,expected_gpus,limit", [
    ("cuda", None, ["0", "1"], [(0,), (1,), (0,), (1,), (0,)], 2),
    ("cuda", 3, ["0", "1"], [(0,), (1,), (0,), (0,), (1,)], 3),   # 3 slots: 0, 1, 0
    ("cpu", 2, ["0", "1"], [()] * 5, 2),
])
def test_submitit_local_schedules_jobs_and_gpus(device, workers, gpus, expected_gpus, limit,
                                                tmp_path, monkeypatch):
    import submitit
    log = {"in_flight": 0, "max_in_flight": 0, "jobs": []}
    monkeypatch.setattr(submitit, "LocalExecutor", _fake_local_executor(log))
    monkeypatch.setattr(executors, "cuda_devices", lambda: list(gpus))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    todo = sweep.expand_grid(grid(["seq"], range(5), overrides={"device": device}))
    ex = sweep.Executor("submitit_local", workers, {"timeout_min": 9, "partition": "x"})
    assert executors.compute_submitit(todo, tmp_path, ex, "g", poll_s=0) == []
    assert log["max_in_flight"] == limit
    assert [j[1] for j in log["jobs"]] == expected_gpus
    assert {j[2] for j in log["jobs"]} == {9}
    assert {j[3] for j in log["jobs"]} == ({"1"} if device == "cpu" else {None})
    assert "OMP_NUM_THREADS" not in os.environ


# ------------------------------------------------------------------------- running
def test_sweep_of_6_runs_with_2_finished_runs_only_4(results_dir, spy, capsys):
    g = grid(["seq", "average", "pm"], [0, 1])
    cfgs = sweep.expand_grid(g)
    assert len(cfgs) == 6
    finished = [cfgs[0], cfgs[5]]                       # seq seed 0, pm seed 1
    for cfg in finished:
        get_or_run(cfg, results_dir, progress=False)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns)
              for p in (result_path(c, results_dir) for c in finished)}
    spy.clear()

    df = sweep.run_sweep(g, workers=1, results_dir=results_dir)

    assert sorted(spy) == sorted(c.run_name() for c in cfgs[1:5])
    for p, (data, mtime) in before.items():
        assert p.read_bytes() == data and p.stat().st_mtime_ns == mtime
    out = capsys.readouterr().out
    assert "2 of 6 runs already finished; computing 4" in out
    assert out.count("  [") == 4                        # one line per computed run
    assert re.search(r"^computed 4 of 4 runs in \d+ (s|min \d\d s) \(wall\)$", out, re.M)
    assert len(df) == 6
    assert list(df["variant"]) == ["seq", "seq", "average", "average", "pm", "pm"]
    assert list(df["seed"]) == [0, 1, 0, 1, 0, 1]
    assert list(df["path"]) == [str(result_path(c, results_dir)) for c in cfgs]
    assert df["til_A_last"].between(0, 1).all() and df["cil_A_last"].notna().all()

    spy.clear()                                         # a second sweep computes nothing
    assert len(sweep.run_sweep(g, workers=1, results_dir=results_dir)) == 6
    assert spy == []
    out = capsys.readouterr().out
    assert "6 of 6 runs already finished; computing 0" in out and "computed" not in out


def test_corrupt_result_is_recomputed(results_dir, spy):
    g = grid()
    good, bad = sweep.expand_grid(g)
    for cfg in (good, bad):
        get_or_run(cfg, results_dir, progress=False)
    path = result_path(bad, results_dir)
    path.write_text(path.read_text()[:100])             # truncated
    done, todo = sweep.plan([good, bad], results_dir)
    assert (done, todo) == ([good], [bad])
    spy.clear()
    df = sweep.run_sweep(g, workers=1, results_dir=results_dir)
    assert spy == [bad.run_name()]
    assert read_result(path)["name"] == bad.run_name() and len(df) == 2


def test_failed_run_does_not_stop_the_others(results_dir, monkeypatch):
    g = grid()
    seq, pm = sweep.expand_grid(g)
    real = runner.run_experiment

    def run(cfg, progress=True, **kwargs):
        if cfg.method == "seq":
            raise RuntimeError("boom")
        return real(cfg, progress=progress)

    monkeypatch.setattr(runner, "run_experiment", run)
    with pytest.raises(sweep.SweepError, match=r"1 of 2 runs failed") as err:
        sweep.run_sweep(g, workers=1, results_dir=results_dir)
    assert f"run {seq.run_name()} (seq, seed 0) failed with RuntimeError: boom" in str(err.value)
    assert isinstance(err.value.__cause__, RuntimeError)
    assert not result_path(seq, results_dir).exists()
    assert read_result(result_path(pm, results_dir))["name"] == pm.run_name()


@pytest.mark.slow
def test_submitit_local_executor_runs_a_grid(results_dir, monkeypatch):
    # the runs happen in submitit's subprocesses, never in this process
    monkeypatch.setattr(runner, "run_experiment", lambda *a, **k: pytest.fail("ran here"))
    g = grid(executor={"kind": "submitit_local", "workers": 2, "slurm": {"timeout_min": 5}})
    df = sweep.run_sweep(g, results_dir=results_dir)
    assert len(df) == 2 and list(df["variant"]) == ["seq", "pm"]
    for cfg in sweep.expand_grid(g):
        assert read_result(result_path(cfg, results_dir))["provenance"]["torch_threads"] == 1
    assert len(list((results_dir / "_submitit").glob("grid-*/*_log.out"))) == 2


@pytest.mark.slow
def test_submitit_failed_job_names_the_run_and_its_log(results_dir, monkeypatch):
    # A config no grid can produce (its method does not exist) fails at the job's
    # start, before any training.
    bogus = dataclasses.replace(sweep.expand_grid(grid(["seq"]))[0], method="no_such_method")
    monkeypatch.setattr(sweep, "expand_grid", lambda g: [bogus])
    g = grid(["seq"], executor={"kind": "submitit_local"})
    with pytest.raises(sweep.SweepError, match=rf"1 of 1 runs failed .*\n  run "
                                               rf"{bogus.run_name()} \(no_such_method, seed 0\) "
                                               rf"failed with .*; log: .*_log\.err") as err:
        sweep.run_sweep(g, results_dir=results_dir)
    log = str(err.value).rsplit("log: ", 1)[1].strip()
    assert "unknown method 'no_such_method'" in open(log).read()
    assert not result_path(bogus, results_dir).exists()


# ------------------------------------------------------------------------- the CLI
def write_grid(tmp_path, g, name="tiny"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(g))
    return path


def test_cli_dry_run_prints_the_plan_and_computes_nothing(tmp_path, results_dir, capsys,
                                                          monkeypatch):
    g = grid(["seq", "pm"], [0, 1])
    seq0 = sweep.expand_grid(g)[0]
    get_or_run(seq0, results_dir, progress=False)
    monkeypatch.setattr(runner, "run_experiment", lambda *a, **k: pytest.fail("ran"))
    path = write_grid(tmp_path, g)
    assert cli.main(["sweep", str(path), "--results-dir", str(results_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 of 4 runs already finished; computing 3" in out
    assert f"done     seq on synthetic, seed 0 ({seq0.run_name()})" in out
    assert out.count("to run   ") == 3 and "to run   pm on synthetic, seed 1" in out
    assert files(results_dir) == [f"{seq0.run_name()}.json"]


def test_cli_runs_the_grid_and_writes_the_table(tmp_path, results_dir, capsys):
    path = write_grid(tmp_path, grid())
    assert cli.main(["sweep", str(path), "--results-dir", str(results_dir),
                     "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "0 of 2 runs already finished; computing 2" in out
    assert "til_A_last" in out and "cil_forgetting" in out
    import pandas as pd
    table = pd.read_csv(results_dir / "sweep-tiny.csv")
    assert list(table["variant"]) == ["seq", "pm"]
    assert str(results_dir / "sweep-tiny.csv") in out


def test_cli_runs_several_grids_in_turn_and_checks_them_all_first(tmp_path, results_dir, capsys):
    first = write_grid(tmp_path, grid(["seq"], [0]), "first")
    second = write_grid(tmp_path, grid(["seq", "pm"], [0]), "second")
    bad = tmp_path / "bad.yaml"
    bad.write_text("variants: [seq\n")
    assert cli.main(["sweep", str(first), str(bad), "--results-dir", str(results_dir)]) == 2
    assert files(results_dir) == []          # a bad grid stops everything before any run
    capsys.readouterr()
    assert cli.main(["sweep", str(first), str(second), "--results-dir", str(results_dir),
                     "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert out.index(f"== {first}") < out.index("0 of 1 runs already finished; computing 1")
    assert out.index(f"== {second}") < out.index("1 of 2 runs already finished; computing 1")
    assert (results_dir / "sweep-first.csv").exists() and (results_dir / "sweep-second.csv").exists()


@pytest.mark.parametrize("content,args,message", [
    ({"variants": ["seq"], "profile": "smoke", "executor": {"kind": "pbs"}}, [],
     "unknown executor 'pbs'"),
    ({"variants": ["seq"], "profile": "smoke", "seed": [0]}, [], "unknown grid key 'seed'"),
    ("variants: [seq\n", [], "is not valid YAML"),
    (None, [], "cannot read grid file"),
    ({"variants": ["seq"], "profile": "smoke"}, ["--workers", "0"],
     "workers must be a positive integer"),
])
def test_cli_bad_grid_exits_2_and_writes_nothing(tmp_path, results_dir, capsys, content, args,
                                                 message):
    path = tmp_path / "bad.yaml"
    if content is not None:
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    code = cli.main(["sweep", str(path), "--results-dir", str(results_dir), *args])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("clmerge: error: ") and message in err
    assert files(results_dir) == []


@pytest.mark.parametrize("seconds,text", [(0.4, "0 s"), (59.4, "59 s"), (59.6, "1 min 00 s"),
                                          (2616, "43 min 36 s"), (3600, "1 h 00 min"),
                                          (7530, "2 h 05 min")])
def test_a_sweep_s_wall_time_reads_in_its_largest_units(seconds, text):
    assert sweep.duration(seconds) == text
