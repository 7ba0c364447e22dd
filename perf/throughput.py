"""Training throughput of seq and P&M at the paper's scale, and the time of one P&M merge.

ViT-B/16 (random init, ``--blocks`` of its 12 blocks), a fresh rank-10 LoRA on the K/V
rows of every block's qkv and a 10-class head, trained on synthetic 224 x 224 images at
the paper's batch (256), through the real pipeline: the ``paper`` profile's settings
(``make_config``), ``Run``, the ``MergingTemplate`` (bf16 autocast and TF32 on CUDA) and
P&M's ``PerturbationPlugin`` (``Run.method_plugins``). Sequential LoRA (seq) and P&M (pm) train
alternately, ``--rounds`` rounds of ``--warmup`` untimed and ``--steps`` timed steps each,
on the same model. Reported per method:

- images/s of a training step (forward, loss, backward, AdamW step and every plugin hook
  between them; timed with CUDA events, data loading and the host-to-device copy
  excluded), from the median step time; also the wall-clock rate with loading included;
- peak GPU memory (``torch.cuda.max_memory_allocated``) while it trains;
- achieved TFLOP/s and model FLOP utilisation: model FLOPs = 3 x the forward pass
  (ViT-B/16 forward at 224 px: 17.56 GMACs = 35.1 GFLOP per image with 12 blocks),
  against the device's peak dense bf16 rate (``PEAK_BF16_DENSE``; an unknown device gives
  MFU "unknown peak"; ``--peak-tflops`` sets one).

Then one P&M merge (``PerturbAndMergeMerger`` through the ``MergePlugin``): the Fisher over
``--fisher-batches`` training batches (one task's worth: Split CIFAR-100 in 10 tasks has
5000 images = 20 batches of 256) and the coefficient, and its ratio to the training time
of one task at the measured P&M rate (``--task-epochs`` epochs over the same images; the
target is merge / train <= 0.15). Prints a table and writes JSON.

    .venv/bin/python perf/throughput.py --device cuda --out throughput.json
    .venv/bin/python perf/throughput.py --device cpu --blocks 2 --batch 4 \\
        --image-size 32 --steps 2 --warmup 1 --fisher-batches 2      # seconds, CPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from clmerge.avalanche_api import SupervisedPlugin

BENCHMARK = "throughput_synthetic"
BACKBONE = "vit_b16_random"
N_CLASSES, N_EXPERIENCES = 100, 10   # Split CIFAR-100 in 10 tasks: 10-class heads

# Peak dense bf16 tensor-core rate (FLOP/s, no sparsity) by a substring of
# torch.cuda.get_device_name(); first match wins, so specific names come first.
PEAK_BF16_DENSE: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),        # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H200", 989e12),        # also GH200
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
]


def peak_bf16_flops(device_name: str) -> float | None:
    for key, flops in PEAK_BF16_DENSE:
        if key.lower() in device_name.lower():
            return flops
    return None


def vit_b16_macs(depth: int = 12, image: int = 224, patch: int = 16, dim: int = 768,
                 mlp: int = 3072) -> int:
    """Multiply-accumulates of one ViT-B/16 forward pass per image (no head)."""
    n = (image // patch) ** 2 + 1                       # patches + class token
    embed = (n - 1) * dim * 3 * patch * patch
    block = (n * dim * 3 * dim          # qkv
             + 2 * n * n * dim          # q k^T and attn v
             + n * dim * dim            # proj
             + 2 * n * dim * mlp)       # fc1, fc2
    return embed + depth * block


# ---------------------------------------------------------------------- timing
class StepTimer(SupervisedPlugin):
    """Times every training iteration from ``before_training_iteration`` to
    ``after_training_iteration`` (forward, loss, backward, optimizer step and the plugin
    hooks between them; not the data loading). On CUDA with events, so the host never
    waits inside the loop; the times are read after the experience.

    ``warmup`` iterations at the start of each experience are not kept;
    ``max_iterations`` stops the experience after that many; ``wall_seconds`` and
    ``wall_images`` add up the wall-clock time of the kept iterations *with* loading.
    """

    def __init__(self, warmup: int = 0, max_iterations: int | None = None):
        super().__init__()
        self.warmup, self.max_iterations = warmup, max_iterations
        self.times: list[float] = []
        self.images: list[int] = []
        self.wall_seconds, self.wall_images = 0.0, 0
        self._pending: list = []

    def _now(self):
        if self._cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def _sync_clock(self) -> float:
        if self._cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def before_training_exp(self, strategy, **kwargs):
        self._cuda = strategy.device.type == "cuda"
        self._i, self._pending, self._wall0, self._wall1 = 0, [], None, None

    def before_training_epoch(self, strategy, **kwargs):
        if self.warmup == 0 and self._wall0 is None:
            self._wall0 = self._sync_clock()

    def before_training_iteration(self, strategy, **kwargs):
        self._start = self._now()

    def after_training_iteration(self, strategy, **kwargs):
        self._pending.append((self._i, self._start, self._now(), len(strategy.mb_y)))
        self._i += 1
        if self._i == self.warmup:
            self._wall0 = self._sync_clock()
        if self.max_iterations is not None and self._i >= self.max_iterations:
            self._wall1 = self._sync_clock()
            strategy.stop_training()

    def after_training_exp(self, strategy, **kwargs):
        end = self._wall1 if self._wall1 is not None else self._sync_clock()
        kept = [(s, e, b) for i, s, e, b in self._pending if i >= self.warmup]
        for s, e, b in kept:
            self.times.append(s.elapsed_time(e) / 1000 if self._cuda else e - s)
            self.images.append(b)
        if kept and self._wall0 is not None:
            self.wall_seconds += end - self._wall0
            self.wall_images += sum(b for _, _, b in kept)
        self._pending = []


@contextlib.contextmanager
def registered(name: str, value, registry: dict):
    """``registry[name] = value`` for the body only."""
    old = registry.get(name)
    registry[name] = value
    try:
        yield
    finally:
        if old is None:
            registry.pop(name, None)
        else:
            registry[name] = old


# ---------------------------------------------------------------------- data and model
class SyntheticImages(torch.utils.data.Dataset):
    """``n`` images (3 x size x size, uniform in [0, 1]) cycling through a small fixed
    pool, labels ``i % n_classes``; lazy, so a task's worth costs no memory."""

    def __init__(self, n: int, size: int, n_classes: int, pool: int = 16, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.pool = torch.rand(pool, 3, size, size, generator=g)
        self.targets = [i % n_classes for i in range(n)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        return self.pool[i % len(self.pool)], self.targets[i]


def synthetic_benchmark(per_experience: int, size: int):
    """Builder of a class-incremental stream of :class:`SyntheticImages` whose every
    experience has at least ``per_experience`` training images."""
    from clmerge.benchmarks.stream import class_incremental_stream_from_datasets

    def build(n_experiences: int = N_EXPERIENCES, seed: int = 0):
        per_class = math.ceil(per_experience * n_experiences / N_CLASSES)
        train = SyntheticImages(N_CLASSES * per_class, size, N_CLASSES, seed=seed)
        test = SyntheticImages(N_CLASSES, size, N_CLASSES, seed=seed + 1)
        return class_incremental_stream_from_datasets(
            BENCHMARK, train, test, n_classes=N_CLASSES, n_experiences=n_experiences,
            seed=seed, input_shape=(3, size, size), is_image=True)

    build.__doc__ = "synthetic images for perf/throughput.py"
    return build


# ---------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--batch", type=int, default=256, help="training batch (paper: 256)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per method and round")
    ap.add_argument("--warmup", type=int, default=5,
                    help="untimed steps at the start of every round")
    ap.add_argument("--rounds", type=int, default=2,
                    help="alternating rounds (seq, pm), (pm, seq), ...")
    ap.add_argument("--blocks", type=int, default=12, help="ViT-B/16 blocks (12: the model)")
    ap.add_argument("--image-size", type=int, default=224,
                    help="side of the synthetic images (the backbone resizes to 224)")
    ap.add_argument("--fisher-batches", type=int, default=20,
                    help="training batches of the Fisher (one task: 5000 CIFAR images = 20)")
    ap.add_argument("--fisher", choices=("per_sample", "per_batch"), default="per_sample")
    ap.add_argument("--fisher-engine", choices=("hooks", "vmap"), default="hooks")
    ap.add_argument("--fisher-estimator", choices=("empirical", "true"), default="empirical")
    ap.add_argument("--task-epochs", type=int, default=10,
                    help="epochs of one task's training that the merge is compared with "
                         "(paper: 10)")
    ap.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto",
                    help="autocast setting (auto: bf16 on CUDA, off on the CPU)")
    ap.add_argument("--num-workers", type=int, default=0,
                    help="data-loader workers (the step timing excludes loading)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="peak dense bf16 TFLOP/s of the device, if not in the table")
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = ap.parse_args(argv)
    for k in ("batch", "steps", "rounds", "blocks", "fisher_batches", "task_epochs"):
        if getattr(args, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be >= 1")
    return args


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def main(argv=None) -> dict:
    args = parse_args(argv)
    from clmerge.backbones.registry import BACKBONES
    from clmerge.backbones.vit_b16 import build_vit_b16
    from clmerge.benchmarks.registry import BENCHMARKS

    per_exp = args.batch * max(args.warmup + args.steps, args.fisher_batches)
    backbone = (lambda shape, size, pretrained: build_vit_b16(pretrained=False,
                                                              depth=args.blocks),
                "random-init ViT-B/16 (perf/throughput.py)")
    with registered(BENCHMARK, synthetic_benchmark(per_exp, args.image_size), BENCHMARKS), \
            registered(BACKBONE, backbone, BACKBONES):
        return _measure(args, argv)


def _measure(args, argv) -> dict:
    from clmerge.experiment.config import make_config
    from clmerge.experiment.provenance import device_name
    from clmerge.experiment.runner import Run
    from clmerge.strategies.template import resolve_amp

    cfg = make_config("pm", BENCHMARK, "paper", 0, {
        "backbone": BACKBONE, "pretrained": False, "device": args.device,
        "batch_size": args.batch, "epochs": 1,
        "n_experiences": N_EXPERIENCES, "amp": args.amp, "num_workers": args.num_workers,
        "pm.fisher": args.fisher, "pm.fisher_samples": args.fisher_batches * args.batch,
        "pm.fisher_engine": args.fisher_engine, "pm.fisher_estimator": args.fisher_estimator,
        "pm.fisher_batch_size": args.batch})
    run = Run(cfg)
    cuda = args.device == "cuda"
    merger, merge, pm_plugins = run.merger, run.merge, run.method_plugins
    timers = {m: StepTimer(args.warmup, args.warmup + args.steps) for m in ("seq", "pm")}
    strategies = {"seq": run.make_strategy([timers["seq"]]),
                  "pm": run.make_strategy([*pm_plugins, timers["pm"]])}
    exp = run.stream.train_stream[0]
    state = SimpleNamespace(experience=exp, model=run.model)
    merge.before_training_exp(state)

    peak: dict[str, int | None] = {"seq": None, "pm": None}
    for r in range(args.rounds):
        for m in (("seq", "pm") if r % 2 == 0 else ("pm", "seq")):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            strategies[m].train_heads = [0]
            strategies[m].train(exp, drop_last=True)
            if cuda:
                peak[m] = max(peak[m] or 0, torch.cuda.max_memory_allocated())

    name = device_name(args.device)
    peak_flops = args.peak_tflops * 1e12 if args.peak_tflops else (
        peak_bf16_flops(name) if cuda else None)
    macs = vit_b16_macs(args.blocks)
    train_flops = 3 * 2 * macs
    methods = {}
    for m, t in timers.items():
        if not t.times:
            raise SystemExit(f"no timed steps for {m}: the experience has fewer than "
                             f"--warmup + 1 full batches")
        med = statistics.median(t.times)
        ips = args.batch / med
        achieved = ips * train_flops
        methods[m] = {
            "images_per_s": ips,
            "images_per_s_mean": sum(t.images) / sum(t.times),
            "median_step_seconds": med,
            "steps_timed": len(t.times),
            "wall_images_per_s": (t.wall_images / t.wall_seconds) if t.wall_seconds else None,
            "peak_memory_bytes": peak[m],
            "achieved_tflops": achieved / 1e12,
            "mfu": achieved / peak_flops if peak_flops else "unknown peak",
        }
    ratio = methods["pm"]["images_per_s"] / methods["seq"]["images_per_s"]

    merge_rec = _time_merge(merge, merger, state, cuda)
    merge_rec.update(fisher_mode=args.fisher, fisher_batches=args.fisher_batches,
                     fisher_samples=args.fisher_batches * args.batch,
                     fisher_engine=args.fisher_engine, fisher_estimator=args.fisher_estimator)
    task_images = args.fisher_batches * args.batch
    merge_rec["task_train_seconds"] = (args.task_epochs * task_images
                                       / methods["pm"]["images_per_s"])
    merge_rec["task_epochs"] = args.task_epochs
    if "seconds" in merge_rec:
        merge_rec["merge_over_train"] = merge_rec["seconds"] / merge_rec["task_train_seconds"]

    amp = resolve_amp(cfg.amp, cfg.device)
    result = {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "python": platform.python_version(),
        "command": ["perf/throughput.py", *(sys.argv[1:] if argv is None else argv)],
        "setting": {
            "batch": args.batch, "blocks": args.blocks, "image_size": args.image_size,
            "model_input": 224, "steps": args.steps, "warmup": args.warmup,
            "rounds": args.rounds, "autocast": str(amp).removeprefix("torch.") if amp else None,
            "tf32": bool(cuda and torch.backends.cuda.matmul.allow_tf32),
            "num_workers": args.num_workers, "lora_rank": cfg.lora_rank,
            "lora_targets": "K/V rows of attn.qkv",
            "head_classes": len(run.stream.classes_per_exp[0]),
        },
        "flops": {
            "forward_gmacs_per_image": macs / 1e9,
            "train_gflops_per_image": train_flops / 1e9,
            "convention": "model FLOPs: training step = 3 x forward (2 FLOPs per MAC); the "
                          "frozen base weights get no weight gradients, so the hardware "
                          "does about 2 x forward",
            "peak_bf16_dense_flops": peak_flops,
        },
        "methods": methods,
        "ratio_pm_over_seq": ratio,
        "merge": merge_rec,
    }
    _print(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _time_merge(merge, merger, state, cuda: bool) -> dict:
    """Time the MergePlugin's merge and, inside it, the merger's Fisher; the rest is the
    coefficient, folding the LoRA into the base weights and writing theta_hat back."""
    def clock() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    fisher_seconds = []
    fisher = merger.fisher

    def timed_fisher(ctx):
        t0 = clock()
        f = fisher(ctx)
        fisher_seconds.append(clock() - t0)
        return f

    merger.fisher = timed_fisher
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rec: dict = {}
    t0 = clock()
    try:
        merge.after_training_exp(state)
    except torch.cuda.OutOfMemoryError as e:
        rec["error"] = f"CUDA out of memory: {str(e).splitlines()[0]}"
        torch.cuda.empty_cache()
        return rec
    finally:
        merger.fisher = fisher
    rec["seconds"] = clock() - t0
    rec["fisher_seconds"] = fisher_seconds[0]
    rec["coefficient_and_write_seconds"] = rec["seconds"] - fisher_seconds[0]
    rec["coefficient"] = merger.records[-1]["coefficient"]
    rec["peak_memory_bytes"] = torch.cuda.max_memory_allocated() if cuda else None
    return rec


def _print(r: dict) -> None:
    s, f = r["setting"], r["flops"]
    peak = f["peak_bf16_dense_flops"]
    print(f"ViT-B/16 ({s['blocks']} blocks, random init), LoRA r={s['lora_rank']} on "
          f"{s['lora_targets']}, batch {s['batch']}, input {s['image_size']} px -> 224, "
          f"autocast {s['autocast'] or 'off'}, TF32 {'on' if s['tf32'] else 'off'}, "
          f"{s['num_workers']} loader workers")
    print(f"device {r['device']}, torch {r['torch']}; peak dense bf16 "
          + (f"{peak / 1e12:.0f} TFLOP/s" if peak else "unknown")
          + f"; {f['train_gflops_per_image']:.1f} GFLOP per training image (3 x forward)")
    print(f"{'method':<6} {'images/s':>10} {'step ms':>9} {'wall img/s':>11} "
          f"{'peak GiB':>9} {'TFLOP/s':>9} {'MFU':>13}")
    for m, x in r["methods"].items():
        mfu = x["mfu"] if isinstance(x["mfu"], str) else f"{100 * x['mfu']:.1f}%"
        wall = "-" if x["wall_images_per_s"] is None else f"{x['wall_images_per_s']:.1f}"
        print(f"{m:<6} {x['images_per_s']:>10.1f} {1000 * x['median_step_seconds']:>9.2f} "
              f"{wall:>11} {_gib(x['peak_memory_bytes']):>9} {x['achieved_tflops']:>9.3f} "
              f"{mfu:>13}")
    print(f"images/s pm / seq = {r['ratio_pm_over_seq']:.3f}  (target >= 0.95)")
    g = r["merge"]
    what = (f"P&M merge, Fisher {g['fisher_estimator']} {g['fisher_mode']} "
            f"({g['fisher_engine']}) over {g['fisher_batches']} batches "
            f"({g['fisher_samples']} images) + coefficient")
    if "error" in g:
        print(f"{what}: {g['error']}")
    else:
        print(f"{what}: {g['seconds']:.3f} s (Fisher {g['fisher_seconds']:.3f} s, "
              f"coefficient + write {g['coefficient_and_write_seconds']:.3f} s), "
              f"a = {g['coefficient']:.3f}, "
              f"peak {_gib(g['peak_memory_bytes'])} GiB")
        print(f"merge / training of one task ({g['task_epochs']} epochs of "
              f"{g['fisher_samples']} images at the pm rate, {g['task_train_seconds']:.1f} s) "
              f"= {g['merge_over_train']:.3f}  (target <= 0.15)")


if __name__ == "__main__":
    main()
