"""Checkpoints and resume: a run interrupted after any experience and restarted ends
with exactly the result of an uninterrupted run, for every kind of state a method keeps;
a real subprocess killed mid-run resumes from its last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clmerge.experiment import checkpoint, runner
from clmerge.experiment.config import make_config
from clmerge.experiment.results import read_result
from clmerge.experiment.runner import checkpoint_path, get_or_run, run_experiment


def smoke(method, **overrides):
    return make_config(method, profile="smoke", overrides=overrides)


class Crash(RuntimeError):
    pass


def _comparable(result):
    """What must match between an interrupted and an uninterrupted run."""
    drop = {"merge_seconds", "train_seconds"}
    tasks = [{k: v for k, v in t.items() if k not in drop} for t in result["tasks"]]
    return result["R"], result["R_til"], tasks


# one method per kind of state: none, running sums + a generator (P&M), a list of task
# vectors (TIES), a seeded dropper (DARE), the fine-tuned start (MagMax@ft), Avalanche's
# EWC importances and clock, LwF's teacher module, TRM's per-task hand-over
@pytest.mark.parametrize("method,overrides", [
    ("seq", {}), ("pm", {}), ("ties", {}), ("dare", {}), ("magmax", {"start": "finetuned"}),
    ("ewc", {}), ("lwf", {}), ("trm", {}), ("average", {"finetune": "full"}),
])
def test_interrupted_run_resumes_to_the_same_result(method, overrides, tmp_path, monkeypatch):
    cfg = smoke(method, **overrides)
    reference = run_experiment(cfg, progress=False)
    save = checkpoint.save

    def save_then_crash(folder, experience, *a, **k):
        path = save(folder, experience, *a, **k)
        if experience == 2:
            raise Crash("killed after experience 2")
        return path

    monkeypatch.setattr(checkpoint, "save", save_then_crash)
    with pytest.raises(Crash):
        run_experiment(cfg, progress=False, checkpoint_dir=tmp_path)
    assert json.loads((tmp_path / "state.json").read_text())["experience"] == 2
    monkeypatch.setattr(checkpoint, "save", save)
    resumed = run_experiment(cfg, progress=False, checkpoint_dir=tmp_path)
    assert resumed["provenance"]["resumed_after_experience"] == 2
    assert _comparable(resumed) == _comparable(reference)


def test_checkpoint_of_another_config_is_ignored(tmp_path, monkeypatch):
    cfg = smoke("seq")
    save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda *a, **k: (save(*a, **k), exec("raise RuntimeError('x')")))
    with pytest.raises(RuntimeError):
        run_experiment(cfg, progress=False, checkpoint_dir=tmp_path)
    monkeypatch.setattr(checkpoint, "save", save)
    other = run_experiment(smoke("seq", lr=0.02), progress=False, checkpoint_dir=tmp_path)
    assert other["provenance"]["resumed_after_experience"] is None


def test_unreadable_checkpoint_starts_over(tmp_path):
    (tmp_path / "state.json").write_text("{not json")
    r = run_experiment(smoke("seq"), progress=False, checkpoint_dir=tmp_path)
    assert r["provenance"]["resumed_after_experience"] is None


def test_finished_run_removes_its_checkpoints(results_dir):
    cfg = smoke("seq")
    get_or_run(cfg, results_dir, progress=False)
    assert not checkpoint_path(cfg, results_dir).exists()


def test_nan_loss_names_experience_and_step_and_keeps_the_checkpoint(results_dir, monkeypatch):
    from clmerge.plugins import diagnostics

    cfg = smoke("seq")
    original = diagnostics.DiagnosticsPlugin.after_backward

    def poison(self, strategy, **kwargs):
        if strategy.experience.current_experience == 3 and self._step == 1:
            strategy.loss = strategy.loss * float("nan")
        return original(self, strategy, **kwargs)

    monkeypatch.setattr(diagnostics.DiagnosticsPlugin, "after_backward", poison)
    with pytest.raises(FloatingPointError,
                       match="experience 3 diverged during training: the loss became nan at "
                             "step 1"):
        get_or_run(cfg, results_dir, progress=False)
    state = json.loads((checkpoint_path(cfg, results_dir) / "state.json").read_text())
    assert state["experience"] == 2
    assert not list(results_dir.glob("*.json"))


@pytest.mark.slow
def test_killed_subprocess_resumes_from_its_last_checkpoint(results_dir):
    args = ["--method", "pm", "--profile", "smoke", "--seed", "0", "--out", str(results_dir),
            "--quiet", "--set", "epochs=40"]
    cfg = make_config("pm", profile="smoke", overrides={"epochs": 40})
    state = checkpoint_path(cfg, results_dir) / "state.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "clmerge.cli", "run", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["experience"] >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads(state.read_text())["experience"]
    assert 1 <= done < cfg.n_experiences - 1
    assert not list(Path(results_dir).glob("*.json"))  # no result from a killed run
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"resuming {cfg.run_name()} after experience {done}" in out.stdout
    resumed = read_result(runner.result_path(cfg, results_dir))
    assert resumed["provenance"]["resumed_after_experience"] == done
    reference = run_experiment(cfg, progress=False)
    assert _comparable(resumed) == _comparable(reference)
