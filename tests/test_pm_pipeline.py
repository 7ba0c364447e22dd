"""Perturb-and-Merge in the pipeline: the paper's invariants, and that it learns."""

import pytest
import torch

from clmerge.experiment.config import make_config
from clmerge.avalanche_api import SupervisedPlugin
from clmerge.experiment.runner import Run, run_experiment
from clmerge.plugins.perturbation import PerturbationPlugin


def pm(**overrides):
    return make_config("pm", profile="smoke", overrides=overrides)


@pytest.fixture(scope="module")
def pm_default():
    return run_experiment(pm(), progress=False)


def test_first_coefficient_is_one_and_all_in_unit_interval(pm_default):
    a = [t["coefficient"] for t in pm_default["tasks"]]
    assert a[0] == 1.0
    assert all(0.0 <= x <= 1.0 for x in a)


def test_running_sums_give_the_stored_coefficients(pm_default):
    stored = run_experiment(pm(**{"pm.storage": "stored"}), progress=False)
    a_run = [t["coefficient"] for t in pm_default["tasks"]]
    a_sto = [t["coefficient"] for t in stored["tasks"]]
    assert a_run == pytest.approx(a_sto, abs=1e-9)
    assert pm_default["R"] == stored["R"]
    bytes_run = [t["state_bytes"] for t in pm_default["tasks"]]
    bytes_sto = [t["state_bytes"] for t in stored["tasks"]]
    assert len(set(bytes_run)) == 1                    # O(1) in the number of tasks
    assert bytes_sto == [bytes_sto[0] * (i + 1) for i in range(len(bytes_sto))]  # O(T)


def test_eps_zero_is_merge_only():
    a = run_experiment(pm(**{"pm.eps": 0.0}), progress=False)
    b = run_experiment(pm(**{"pm.perturbation": "none"}), progress=False)
    assert a["R"] == b["R"]
    c = run_experiment(pm(**{"pm.eps": 0.5, "pm.p0": 0.0, "pm.p_plus": 1.0,
                             "pm.p_minus": 0.0}), progress=False)
    assert c["R"] != b["R"]


class StepCounter(SupervisedPlugin):
    """Checks that each training iteration ran exactly one forward and one backward."""

    def __init__(self, model, monkeypatch):
        super().__init__()
        self.calls = {"forward": 0, "backward": 0}
        self.steps = 0
        model.register_forward_pre_hook(lambda *a: self._bump("forward"))
        original = torch.Tensor.backward

        def counted(tensor, *args, **kwargs):
            self._bump("backward")
            return original(tensor, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, "backward", counted)

    def _bump(self, key):
        self.calls[key] += 1

    def before_training_iteration(self, strategy, **kwargs):
        self.calls = {"forward": 0, "backward": 0}

    def after_training_iteration(self, strategy, **kwargs):
        assert self.calls == {"forward": 1, "backward": 1}
        self.steps += 1


@pytest.mark.parametrize("overrides", [
    {}, {"pm.perturbation": "gaussian"}, {"finetune": "full"},
])
def test_each_step_is_one_forward_and_one_backward(overrides, monkeypatch):
    run = Run(pm(**overrides))
    counter = StepCounter(run.model, monkeypatch)
    run.add_plugin(counter)
    run.execute()
    n_batches = sum(-(-len(e.dataset) // run.cfg.batch_size) for e in run.stream.train_stream)
    assert counter.steps == n_batches * run.cfg.epochs


def test_perturbation_restores_weights_exactly():
    run = Run(pm(finetune="full"))
    plugin = PerturbationPlugin(run.weights, lora=None, eps=0.5, probs=(0, 1, 0), seed=0)

    class S:  # the strategy attributes the plugin reads
        pass
    plugin.before_training_exp(S())
    with torch.no_grad():
        for p in run.weights.values():
            p.add_(0.1)
    before = {k: p.detach().clone() for k, p in run.weights.items()}
    plugin.before_forward(S())
    assert any(not torch.equal(before[k], p) for k, p in run.weights.items())
    plugin.after_backward(S())
    assert all(torch.equal(before[k], p) for k, p in run.weights.items())


@pytest.mark.slow
def test_pm_learns_on_split_mnist5k_quick():
    """Seeded minimum accuracy on the real quick stream (1 epoch to keep the test short).
    Chance is 10% class-incremental and 50% task-incremental."""
    cfg = make_config("pm", "split_mnist5k", "quick", 0,
                      {"epochs": 1, "pm.fisher_samples": 256})
    r = run_experiment(cfg, progress=False)
    assert r["metrics"]["til"]["A_last"] >= 0.80
    assert r["metrics"]["cil"]["A_last"] >= 0.25


def test_closed_form_matches_line_search_on_a_real_run():
    from clmerge.experiment.pm_checks import closed_form_check
    check = closed_form_check(pm())
    assert len(check["rows"]) == 5
    for row in check["rows"]:
        assert row["abs_diff"] < 1e-5
        assert row["a_closed_form"] == pytest.approx(row["a_recorded"], abs=1e-9)


def test_finite_difference_meets_double_backward_in_float64():
    """In float64 the finite-difference curvature converges to the double-backward one
    as e -> 0 (O(e^2) below the nearest ReLU kink), and the expected sampled loss meets
    the regularised loss there; the summary sentence says where they part."""
    from clmerge.experiment.pm_checks import finite_difference_summary, line_check
    res = line_check(pm(), experience=1, n_samples=128)
    rows = {r["eps"]: r for r in res["finite_difference"]}
    c = res["curvature"]
    assert c != 0
    e = min(rows)          # 1e-3: below the nearest ReLU kink of this small MLP
    assert abs(rows[e]["finite-difference Delta'H Delta"] - c) <= 1e-4 * abs(c)
    gap = rows[e]["expected sampled loss"] - rows[e]["L + (p+ + p-)/2 e^2 Delta'H Delta"]
    assert abs(gap) <= 1e-6 * e ** 2 * abs(c) + 1e-15
    text = finite_difference_summary(res)
    assert "double-backward" in text and text.endswith(".")
    assert len(res["line"]["current"]) == len(res["line"]["a"])


def test_finite_difference_meets_double_backward_through_attention():
    """The same identity on the letters ViT with K/V LoRAs (the quick profile's glyph
    backbone): GELU is smooth, so the finite difference converges to the double-backward
    value at every e, with the error shrinking like e^2; the double backward goes through
    attention (the fused CPU kernels have no second derivative)."""
    from clmerge.experiment.pm_checks import line_check
    cfg = make_config("pm", "split_digits", profile="smoke", overrides={
        "backbone": "vit_letters", "n_experiences": 2, "lora_rank": 4})
    res = line_check(cfg, experience=1, n_samples=64, alphas=[0.0, 1.0],
                     eps_list=[1e-1, 1e-2, 1e-3])
    c = res["curvature"]
    err = {r["eps"]: abs(r["finite-difference Delta'H Delta"] - c)
           for r in res["finite_difference"]}
    assert c != 0 and err[1e-3] <= 1e-5 * abs(c)
    assert err[1e-2] <= 2e-2 * err[1e-1] + 1e-9 * abs(c)     # O(e^2): 100x per decade


@pytest.mark.parametrize("overrides", [
    {"pm.fisher_estimator": "true"},
    {"pm.fisher_normalize": "trace"},
    {"pm.fisher": "per_batch"},
    {"pm.fisher_engine": "vmap", "pm.fisher_sampling": "sequential"},
    {"finetune": "full"},
])
def test_fisher_options_run_and_record(overrides):
    r = run_experiment(pm(**overrides), progress=False)
    a = [t["coefficient"] for t in r["tasks"]]
    tr = [t["fisher_trace"] for t in r["tasks"]]
    assert a[0] == 1.0 and all(0.0 <= x <= 1.0 for x in a)
    assert all(x > 0 for x in tr)


def test_fisher_option_errors_are_config_errors():
    from clmerge.experiment.config import ConfigError
    for bad in ({"pm.fisher_estimator": "exact"}, {"pm.fisher_normalize": "max"},
                {"pm.fisher_estimator": "true", "pm.fisher": "per_batch"},
                {"pm.fisher_estimator": "true", "pm.fisher_engine": "vmap"},
                {"pm.fisher_batch_size": -1}):
        with pytest.raises(ConfigError):
            pm(**bad)
