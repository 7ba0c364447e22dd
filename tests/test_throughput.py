"""The paper-scale performance settings, offline on the CPU: autocast is inert where it
should be, the Fisher never runs under autocast, loader workers give the same batches,
and ``perf/throughput.py`` runs end to end on a tiny ViT-B/16."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from clmerge.experiment.config import make_config
from clmerge.experiment.runner import Run
from clmerge.experiment.seeding import seed_worker
from clmerge.strategies.template import resolve_amp
from clmerge.tensormath.fisher import diagonal_fisher

ROOT = Path(__file__).resolve().parents[1]


def _load_throughput():
    spec = importlib.util.spec_from_file_location("throughput",
                                                  ROOT / "perf" / "throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------- autocast
def test_resolve_amp():
    assert resolve_amp("auto", "cpu") is None
    assert resolve_amp("off", "cpu") is None and resolve_amp("off", "cuda") is None
    assert resolve_amp("auto", "cuda") is torch.bfloat16
    assert resolve_amp("bf16", "cpu") is torch.bfloat16
    with pytest.raises(ValueError, match="auto, bf16, off"):
        resolve_amp("fp8", "cuda")


def _train_one_experience(amp: str = "auto", num_workers: int = 0,
                          loaders: list | None = None):
    """Smoke-profile run, one experience; returns (autocast flags seen by the model's
    forwards, trained LoRA tensors)."""
    cfg = make_config("seq", None, "smoke", 0, {"amp": amp, "num_workers": num_workers})
    run = Run(cfg)
    seen = []
    run.model.register_forward_hook(
        lambda m, i, o: seen.append((torch.is_autocast_enabled("cpu"), o.dtype)))
    plugins = []
    if loaders is not None:
        from clmerge.avalanche_api import SupervisedPlugin

        class KeepLoader(SupervisedPlugin):
            def before_training_epoch(self, strategy, **kwargs):
                loaders.append(strategy.dataloader)
        plugins.append(KeepLoader())
    strategy = run.make_strategy(plugins)
    strategy.train_heads = [0]
    strategy.train(run.stream.train_stream[0])
    return seen, [p.detach().clone() for p in run.lora.parameters()]


def test_amp_is_inert_on_cpu():
    """amp=auto on the CPU is no autocast at all: the same weights, bit for bit, as
    amp=off; amp=bf16 does autocast (the switch is wired)."""
    seen_auto, w_auto = _train_one_experience("auto")
    seen_off, w_off = _train_one_experience("off")
    assert seen_auto and not any(on for on, _ in seen_auto + seen_off)
    assert all(torch.equal(a, b) for a, b in zip(w_auto, w_off, strict=True))
    seen_bf16, w_bf16 = _train_one_experience("bf16")
    assert seen_bf16 and all(on for on, _ in seen_bf16)
    assert all(torch.isfinite(w).all() for w in w_bf16)


def test_fisher_ignores_callers_autocast():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    batches = [(torch.randn(5, 6), torch.randint(0, 3, (5,))) for _ in range(2)]
    names = ["0.weight", "2.weight"]
    ref = diagonal_fisher(model, names, batches)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = diagonal_fisher(model, names, batches)
        assert torch.is_autocast_enabled("cpu")      # restored for the caller
    for n in names:
        assert inside[n].dtype == torch.float32
        assert torch.equal(inside[n], ref[n])


# ---------------------------------------------------------------------- loaders
def _batches(num_workers: int):
    cfg = make_config("seq", None, "smoke", 3, {"num_workers": num_workers})
    run = Run(cfg)
    loader = run.train_loader(run.stream.train_stream[1], batch_size=16)
    assert loader.num_workers == num_workers and not loader.pin_memory
    assert loader.persistent_workers == (num_workers > 0)
    return [(x.clone(), y.clone()) for x, y, *_ in loader]


def test_workers_give_the_same_batches():
    plain, workers = _batches(0), _batches(2)
    assert len(plain) == len(workers) > 1
    for (x0, y0), (x2, y2) in zip(plain, workers):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
    # shuffled: not the dataset order
    assert not torch.equal(torch.cat([y for _, y in plain]),
                           torch.cat([y for _, y in plain]).sort().values)


def test_training_loader_workers_same_weights():
    """The template's training loader with 2 seeded persistent workers trains the same
    weights as the single-process loader (one epoch, no augmentation)."""
    loaders = []
    _, plain = _train_one_experience(num_workers=0)
    _, workers = _train_one_experience(num_workers=2, loaders=loaders)
    loader = loaders[0]
    assert loader.num_workers == 2 and loader.persistent_workers
    assert loader.worker_init_fn is seed_worker
    assert all(torch.equal(a, b) for a, b in zip(plain, workers, strict=True))


def test_seed_worker_seeds_python_and_numpy():
    import random

    import numpy as np

    state = torch.get_rng_state()
    try:
        torch.manual_seed(1234)
        seed_worker(0)
        a = (random.random(), np.random.rand(), torch.rand(1).item())
        torch.manual_seed(1234)
        seed_worker(0)
        assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
    finally:
        torch.set_rng_state(state)


# ---------------------------------------------------------------------- benchmark script
def test_flop_count_and_peak_table():
    tp = _load_throughput()
    assert tp.vit_b16_macs(12) == pytest.approx(17.56e9, rel=2e-3)   # "about 17.6 GMACs"
    assert tp.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert tp.peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert tp.peak_bf16_flops("NVIDIA H200") == 989e12
    assert tp.peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert tp.peak_bf16_flops("NVIDIA L40S") == 362e12
    assert tp.peak_bf16_flops("cpu (x86_64, 2 threads)") is None


@pytest.mark.slow
def test_throughput_script_tiny_cpu(tmp_path):
    from clmerge.backbones.registry import BACKBONES
    from clmerge.benchmarks.registry import BENCHMARKS

    tp = _load_throughput()
    out = tmp_path / "tp.json"
    tp.main(["--device", "cpu", "--blocks", "2", "--batch", "4", "--image-size", "32",
             "--steps", "2", "--warmup", "1", "--rounds", "1", "--fisher-batches", "2",
             "--out", str(out)])
    r = json.loads(out.read_text())
    for m in ("seq", "pm"):
        x = r["methods"][m]
        assert x["images_per_s"] > 0 and x["steps_timed"] == 2
        assert x["achieved_tflops"] > 0 and x["mfu"] == "unknown peak"
    assert r["ratio_pm_over_seq"] > 0
    assert r["merge"]["seconds"] > r["merge"]["fisher_seconds"] > 0
    assert r["merge"]["fisher_samples"] == 8 and r["merge"]["coefficient"] == 1.0
    g = r["merge"]
    assert g["fisher_engine"] == "hooks" and g["task_epochs"] == 10
    assert g["task_train_seconds"] == pytest.approx(10 * 8 / r["methods"]["pm"]["images_per_s"])
    assert g["merge_over_train"] == pytest.approx(g["seconds"] / g["task_train_seconds"])
    assert r["setting"]["autocast"] is None and r["torch"] == torch.__version__
    assert "--fisher-batches" in r["command"]
    assert tp.BENCHMARK not in BENCHMARKS and tp.BACKBONE not in BACKBONES   # cleaned up


def test_step_time_benchmark_times_each_method_against_seq(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "perf" / "step_time.py"
    spec = importlib.util.spec_from_file_location("step_time", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "step_time.json"
    result = module.main(["--profile", "smoke", "--methods", "pm", "trm", "--rounds", "2",
                          "--out", str(out)])
    assert set(result["ratio_to_seq"]) == {"seq", "pm", "trm"}
    assert result["ratio_to_seq"]["seq"] == 1.0
    assert all(v > 0 for v in result["median_ms"].values())
    assert json.loads(out.read_text())["iterations"] == result["iterations"] > 0


@pytest.mark.gpu
def test_one_experience_on_cuda_trains_under_bf16_autocast():
    """amp=auto on CUDA: the training forwards run under bf16 autocast, the LoRA
    parameters stay float32 and finite."""
    cfg = make_config("seq", None, "smoke", 0, {"device": "cuda", "n_experiences": 2})
    run = Run(cfg)
    seen = []
    run.model.register_forward_hook(
        lambda m, i, o: seen.append(torch.is_autocast_enabled("cuda")))
    run.strategy.train_heads = [0]
    run.strategy.train(run.stream.train_stream[0])
    assert seen and all(seen)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all()
               for p in run.lora.parameters())
