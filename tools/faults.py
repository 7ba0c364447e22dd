"""Faults and bad inputs, tried for real: the table of the book's appendix.

Each case of :data:`CASES` is a command line of ``clmerge`` (run in-process through
:func:`clmerge.cli.main`) with its results folder inside a fresh folder of its own;
:func:`run_faults` runs them and records what happened: the exit status, the first line
of the message, which files appeared or changed under the case's folder (walked before
and after), and the seconds taken. Every outcome in the table is produced by running
the case; nothing is filled in by hand.

Bad inputs must exit with status 2, print one sentence naming the problem (and the
valid choices, where there are choices), and write nothing. The other kinds are faults
of a run:

- a **diverged run** (``--set lr=1e6``: the loss explodes in the first experience) exits
  1 with one sentence naming the experience and the stage, and writes nothing;
- a **corrupt result** file (truncated, not UTF-8, nested 100,000 deep, or with a valid
  checksum but no ``metrics``) is reported in one line and recomputed;
- a **NaN loss** or a **NaN merge** (not reachable from the command line, where every
  number is checked when parsed: the case patches the diagnostics plugin or the
  ``seq`` merger, as ``tests/test_resume.py`` does) stops the run with the experience
  and the stage named, keeps the checkpoint of the last finished experience and writes
  no result;
- a **corrupt checkpoint** (a ``state.json`` naming ``subprocess:Popen``, a truncated or
  empty tensors file) is ignored with one warning line and the run starts over;
- a **stale temporary file** that a killed write left is removed when the run writes;
- a **concurrent run**: while another process holds the lock of the same result, the
  run waits and then loads that result instead of computing it again;
- a **killed run** (SIGKILL in a subprocess) resumes from its last checkpoint when it
  is started again (the slowest case, about 10 s on a 2-core machine: most of it the
  subprocess's imports).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import yaml

from clmerge import cli
from clmerge.book import BUILD
from clmerge.errors import ConfigError
from clmerge.experiment import checkpoint
from clmerge.experiment.atomic import file_lock
from clmerge.experiment.lifeline import alive, descendants
from clmerge.experiment.config import make_config
from clmerge.experiment.executors import temporary_environ
from clmerge.experiment.results import checksum, read_result, result_path
from clmerge.experiment.runner import checkpoint_path
from clmerge.mergers.sequential import Sequential
from clmerge.plugins import diagnostics

EXIT_BAD_INPUT = 2
COLUMNS = ["case", "input", "tests", "expected", "exit", "message", "written", "seconds",
           "outcome", "as_expected"]

@dataclass(frozen=True)
class Case:
    """One fault. ``argv`` may use ``{out}`` (the results folder, created by nobody),
    ``{data}`` (an empty data folder), ``{file}`` (an existing plain file) and ``{grid}``
    (the grid file ``grid`` is written to as YAML, or ``grid_bytes`` as they are);
    ``needles`` must all appear in the message of a bad input or a diverged run;
    ``damage`` names what a corrupt-result or corrupt-checkpoint case does to the file."""

    name: str
    argv: tuple[str, ...]
    tests: str
    needles: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    grid: dict | None = None
    grid_bytes: bytes | None = None
    kind: str = "bad input"   # a key of EXPECTED
    damage: str = ""


def _run(method: str, *sets: str, profile: str = "smoke", extra: tuple[str, ...] = (),
         out: str = "{out}"):
    argv = ["run", "--method", method, "--profile", profile, *extra]
    for s in sets:
        argv += ["--set", s]
    return (*argv, "--out", out, "--quiet")


def _book(*args: str):
    return ("book", "--profile", "smoke", "--no-html", *args, "--results-dir", "{out}")


CASES: list[Case] = [
    Case("unknown method", _run("tiez"), "a method name that is not registered",
         ("unknown method 'tiez'", "valid methods: seq, pm,", "ties")),
    Case("unknown benchmark", _run("seq", extra=("--benchmark", "split_cifar10")),
         "a benchmark name that is not registered",
         ("unknown benchmark 'split_cifar10'", "valid benchmarks: synthetic", "split_cifar100")),
    Case("unknown backbone", _run("seq", "backbone=resnet9000"),
         "a backbone name that is not registered",
         ("unknown backbone 'resnet9000'", "valid backbones: mlp")),
    Case("unknown profile", _run("seq", profile="quik"), "a profile that does not exist",
         ("unknown profile 'quik'", "valid profiles: paper, quick, smoke")),
    Case("misspelled setting", _run("seq", "epoch=2"), "--set with a setting that does not exist",
         ("unknown setting 'epoch'", "valid settings (method options as METHOD.KEY):",
          "epochs")),
    Case("misspelled method option", _run("pm", "pm.epz=0.5"),
         "--set with a method option that does not exist",
         ("unknown option pm.epz", "valid options of 'pm': eps")),
    Case("option of another method", _run("pm", "ties.k=0.2"),
         "--set with an option of a method other than the one run",
         ("'ties.k' belongs to method 'ties'", "valid options of 'pm': eps")),
    Case("--set without a value", _run("seq", "epochs"), "--set without KEY=VALUE",
         ("--set expects KEY=VALUE", "'epochs'")),
    Case("wrong type", _run("seq", "epochs=two"), "a setting given a value of the wrong type",
         ("setting 'epochs' expects an int", "'two'")),
    Case("negative seed", _run("seq", extra=("--seed", "-1")), "a seed below 0",
         ("setting 'seed' must be >= 0",)),
    Case("eps < 0", _run("pm", "pm.eps=-1"), "P&M's perturbation size below 0",
         ("method 'pm': eps must be >= 0",)),
    Case("probabilities do not sum to 1", _run("pm", "pm.p0=0.5"),
         "P&M's p0 changed alone, so p0 + p_plus + p_minus != 1",
         ("p0, p_plus, p_minus must be in [0, 1] and sum to 1",)),
    Case("rank 0", _run("seq", "lora_rank=0"), "a LoRA rank of 0",
         ("setting 'lora_rank' must be >= 1",)),
    Case("temperature 0", _run("trm", "trm.tau=0"), "TRM's distillation temperature of 0",
         ("method 'trm': tau must be > 0",)),
    Case("invalid choice", _run("seq", "device=gpu"), "a setting outside its choices",
         ("setting 'device' must be one of cpu, cuda",)),
    Case("missing dataset folder",
         _run("seq", profile="paper", extra=("--benchmark", "split_cifar100")),
         "the paper profile's Split CIFAR-100 with CLMERGE_DATA pointing at an empty folder",
         ("CIFAR-100 not found", "cifar-100-python.tar.gz", "CLMERGE_DATA"),
         env={"CLMERGE_DATA": "{data}"}),
    Case("unknown papermill parameter", _book("--chapters", "04_comparison", "-p", "seedz=[0]"),
         "clmerge book with a chapter parameter that does not exist", ("seedz",)),
    Case("unknown chapter", _book("--chapters", "nope"), "clmerge book with a chapter that "
         "does not exist", ("unknown chapter(s) ['nope']", "04_comparison")),
    Case("unknown profile of the book",
         ("book", "--profile", "quik", "--no-html", "--chapters", "04_comparison",
          "--results-dir", "{out}"),
         "clmerge book with a profile that does not exist",
         ("unknown profile 'quik'", "valid profiles: paper, quick, smoke")),
    Case("bad sweep grid", ("sweep", "{grid}", "--results-dir", "{out}"),
         "clmerge sweep on a grid file with a misspelled key (seedz)",
         ("unknown grid key 'seedz'", "valid keys: profile"),
         grid={"profile": "smoke", "variants": ["seq", "pm[eps=0.3]"], "seedz": [0, 1]}),
    Case("--set seed", _run("seq", "seed=5"), "--set of a setting that has its own flag",
         ("--set cannot change 'seed': it has its own option, --seed 5",)),
    Case("--set method", _run("seq", "method=pm"), "--set method=pm (the flag is --method)",
         ("--set cannot change 'method'", "--method pm")),
    Case("--set benchmark", _run("seq", "benchmark=split_digits"),
         "--set benchmark=... (the flag is --benchmark)",
         ("--set cannot change 'benchmark'", "--benchmark split_digits")),
    Case("--set method_args", _run("pm", "method_args=x"),
         "--set method_args=x (options are set one at a time)",
         ("--set cannot replace 'method_args'", "METHOD.KEY=VALUE")),
    Case("bool option not a bool", _run("pm", "pm.clip=banana"),
         "a bool method option given a word that is not true/false/1/0/yes/no",
         ("option pm.clip expects true or false", "'banana'")),
    Case("NaN setting", _run("seq", "lr=nan"), "a learning rate of NaN",
         ("setting 'lr' must be a finite number", "nan")),
    Case("NaN method option", _run("trm", "trm.tau=nan"), "TRM's temperature NaN",
         ("option trm.tau must be a finite number",)),
    Case("infinite setting", _run("seq", "head_lr=inf"), "a head learning rate of inf",
         ("setting 'head_lr' must be a finite number",)),
    Case("absurd epochs", _run("seq", "epochs=1e20"), "10^20 epochs (would run forever)",
         ("setting 'epochs' must be <= 10000",)),
    Case("absurd batch size", _run("seq", "batch_size=1e20"), "a minibatch of 10^20",
         ("setting 'batch_size' must be <= 1000000",)),
    Case("seed beyond 32 bits", _run("seq", extra=("--seed", "4294967296")),
         "a seed numpy cannot take", ("setting 'seed' must be <= 4294967295",)),
    Case("class split", _run("seq", "n_experiences=3"),
         "3 experiences of the 10 classes of the smoke benchmark",
         ("'n_experiences' must divide the 10 classes of synthetic", "valid: 1, 2, 5, 10")),
    Case("results folder under /proc", _run("seq", out="/proc/clmerge-x"),
         "--out where no file can be created", ("results folder '/proc/clmerge-x' is not "
                                                "writable",)),
    Case("results folder is a file", _run("seq", out="{file}"),
         "--out naming an existing file", ("is not a folder", "is a file")),
    Case("results folder through a file", _run("seq", out="{file}/out"),
         "--out below an existing file", ("is not a folder",)),
    Case("empty results folder", _run("seq", out=""), "--out ''",
         ("the results folder must not be an empty path",)),
    Case("book seeds not a list", _book("--chapters", "04_comparison", "-p", "seeds=abc"),
         "clmerge book -p seeds=abc", ("-p seeds='abc': chapter 04_comparison expects a list "
                                       "of integer seeds",)),
    Case("book variant unknown", _book("--chapters", "04_comparison", "-p", "variants=[tiez]"),
         "clmerge book -p variants=[tiez]", ("-p variants: unknown method 'tiez'",)),
    Case("sweep grid not UTF-8", ("sweep", "{grid}", "--results-dir", "{out}"),
         "a grid file with a Latin-1 byte", ("is not UTF-8 text (byte",),
         grid_bytes=b"profile: smoke\nvariants: [seq]\nname: caf\xe9\n"),
    Case("sweep grid alias bomb", ("sweep", "{grid}", "--results-dir", "{out}"),
         "a 400-byte grid whose nested YAML aliases expand to 10^9 values",
         ("holds more than 100000 values once its aliases are expanded",),
         grid_bytes=("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
             f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
             for p, c in zip("abcdefgh", "bcdefghi"))).encode()),
    # budgets past their bound: each would run for ever or exhaust memory
    Case("TRM steps 2^31 - 1", _run("trm", "trm.steps=2147483647"),
         "Adam steps of TRM's merge at the largest int", ("option trm.steps must be <= 100000",
                                                          "each step is a forward and backward")),
    Case("TRM snapshots 2^31 - 1", _run("trm", "trm.snapshots=2147483647"),
         "trajectory snapshots of TRM at the largest int",
         ("option trm.snapshots must be <= 64", "a copy of the mergeable weights")),
    Case("TRM invert steps 2^31 - 1",
         _run("trm", "trm.pc_inputs=inverted", "trm.invert_steps=2147483647"),
         "inversion steps of TRM's inverted inputs at the largest int",
         ("option trm.invert_steps must be <= 1000",)),
    Case("TRM random directions 10^6", _run("trm", "trm.random_directions=1000000"),
         "a million random directions (each a copy of the weights)",
         ("option trm.random_directions must be <= 64",)),
    Case("diagnostic steps 10^7", _run("seq", "diag_steps=1e7"),
         "ten million diagnostic steps", ("setting 'diag_steps' must be <= 1000000",)),
    Case("LoRA rank 10^5", _run("seq", "lora_rank=100000"), "a LoRA rank of 100,000",
         ("setting 'lora_rank' must be <= 4096",)),
    Case("lr underflows to 0", _run("seq", "lr=1e-400"),
         "a learning rate that underflows to 0 (the adapter would not move)",
         ("setting 'lr' must be >= 1e-12", "changes no float32 weight", "'1e-400'")),
    Case("lora_alpha 1e38", _run("seq", "lora_alpha=1e38"),
         "a LoRA alpha whose scale overflows an update", ("setting 'lora_alpha' must be <= 1e+06",)),
    Case("LoRA update below float32", _run("seq", "lr=1e-11", "lora_alpha=1e-5"),
         "lr x alpha / r = 2.5e-17: a LoRA update no float32 weight can take",
         ("lr x lora_alpha / lora_rank = 2.5e-17 is below 1e-12",)),
    # backbones for images on the stream of vectors
    *[Case(f"{b} on vectors", _run("seq", f"backbone={b}"),
           f"backbone {b} on the synthetic stream of vectors",
           (f"backbone '{b}' takes images, and benchmark 'synthetic' is a stream of vectors",))
      for b in ("mobilenet_v2", "vit_letters", "vit_b16_in21k")],
    # given twice: refused, naming both values
    Case("--method twice", _run("seq", extra=("--method", "pm")),
         "--method seq --method pm", ("--method is given twice (seq and pm)",)),
    Case("--seed twice", _run("seq", extra=("--seed", "0", "--seed", "1")),
         "--seed 0 --seed 1", ("--seed is given twice (0 and 1)",)),
    Case("--set twice", _run("seq", "epochs=1", "epochs=2"), "--set epochs=1 --set epochs=2",
         ("--set epochs is given twice ('1' and '2')",)),
    Case("variant option twice", ("sweep", "{grid}", "--results-dir", "{out}", "--dry-run"),
         "a grid variant pm[eps=0.3,eps=0.4]",
         ("variant 'pm[eps=0.3,eps=0.4]' sets option 'eps' twice ('0.3' and '0.4')",),
         grid={"profile": "smoke", "variants": ["pm[eps=0.3,eps=0.4]"]}),
    Case("YAML key twice", ("sweep", "{grid}", "--results-dir", "{out}"),
         "a grid file giving overrides' epochs twice",
         ("gives key 'epochs' twice (line 4: 1, line 5: 2)",),
         grid_bytes=b"profile: smoke\nvariants: [seq]\noverrides:\n  epochs: 1\n  epochs: 2\n"),
    # settings the run does not use: one rule for all of them
    Case("cub_split on synthetic", _run("seq", "cub_split=pilot"),
         "the CUB split on the synthetic stream",
         ("setting 'cub_split'='pilot' applies to benchmark cub200 only",)),
    Case("imagenet_r_split on synthetic", _run("seq", "imagenet_r_split=/etc/passwd"),
         "an ImageNet-R split file on the synthetic stream",
         ("setting 'imagenet_r_split'='/etc/passwd' applies to benchmark imagenet_r only",)),
    Case("vit_weights on the MLP", _run("seq", "vit_weights=orig_in21k"),
         "ViT-B/16 weights for the MLP",
         ("setting 'vit_weights'='orig_in21k' applies to backbone vit_b16_in21k only",)),
    Case("pretrained on the MLP", _run("seq", "pretrained=true"),
         "pretrained=true for the MLP (it has no pretrained weights)",
         ("setting 'pretrained'=True applies to backbones with pretrained weights",)),
    Case("lr for probe", _run("probe", "lr=0.5"), "a learning rate for probe (trains nothing)",
         ("setting 'lr'=0.5 applies to methods that train", "method 'probe' (it trains "
                                                            "nothing)")),
    Case("empty benchmark", _run("seq", extra=("--benchmark", "")), "--benchmark ''",
         ("argument --benchmark: an empty name",)),
    # the book's parameters, checked before any chapter runs
    Case("book benchmarks=42", _book("-p", "benchmarks=42"), "clmerge book -p benchmarks=42",
         ("-p benchmarks=42: chapter 00_findings expects a list of benchmarks",)),
    Case("book lrs=5", _book("-p", "lrs=5"), "clmerge book -p lrs=5",
         ("-p lrs=5: chapter 07_regime_map expects a mapping of benchmarks",)),
    Case("book loss_threshold=abc", _book("-p", "loss_threshold=abc"),
         "clmerge book -p loss_threshold=abc", ("-p loss_threshold='abc': chapter "
                                                "03_trajectory_regularized_merging expects "
                                                "a finite number",)),
    Case("book --chapters without names", _book("--chapters"),
         "clmerge book --chapters with no chapter after it",
         ("argument --chapters: expected at least one argument",)),
    # grids
    *[Case(f"grid key {label}", ("sweep", "{grid}", "--results-dir", "{out}"),
           f"a grid with the key {label}", (needle,), grid_bytes=text)
      for label, text, needle in [
          ("1", b"profile: smoke\nvariants: [seq]\n1: x\n", "the grid has the key 1"),
          ("null", b"profile: smoke\nvariants: [seq]\nnull: 1\n", "the grid has the key None"),
          ("{1: 2} in overrides", b"profile: smoke\nvariants: [seq]\noverrides: {1: 2}\n",
           "grid key 'overrides' has the key 1"),
          ("{1: 2} in executor", b"profile: smoke\nvariants: [seq]\nexecutor: {1: 2}\n",
           "grid key 'executor' has the key 1")]],
    Case("slurm mem_gb .inf", ("sweep", "{grid}", "--results-dir", "{out}"),
         "an executor with infinite memory", ("slurm parameter 'mem_gb' must be in",),
         grid_bytes=b"profile: smoke\nvariants: [seq]\nexecutor:\n  slurm: {mem_gb: .inf}\n"),
    Case("timeout_min 0", ("sweep", "{grid}", "--results-dir", "{out}", "--executor",
                           "submitit_local"),
         "a submitit job with a timeout of 0 minutes",
         ("slurm parameter 'timeout_min' must be in [1, 525600]",),
         grid_bytes=b"profile: smoke\nvariants: [seq]\nexecutor:\n  slurm: {timeout_min: 0}\n"),
    Case("second grid bad", ("sweep", "{grid}", "{file}", "--results-dir", "{out}"),
         "clmerge sweep good.yaml bad.yaml (the second is not a grid)",
         ("must hold a mapping with keys",),
         grid={"profile": "smoke", "variants": ["seq"]}),
    Case("dry run of 6,000 runs", ("sweep", "{grid}", "--results-dir", "{out}", "--dry-run"),
         "a dry run of 1,000 variants x 6 seeds",
         ("holds 6000 runs", "more than 5000", "split it into several grid files"),
         grid={"profile": "smoke", "variants": [f"pm[eps={i / 1000}]" for i in range(1000)],
               "seeds": list(range(6))}),
    Case("result path is a FIFO", _run("seq"), "a FIFO where the run's result file goes",
         ("is a FIFO, not a regular file, where a result file is expected",),
         kind="not a file", damage="result"),
    Case("checkpoint tensors are a FIFO", _run("seq"),
         "a FIFO where the checkpoint's tensors file is", (
             "is a FIFO, not a regular file, where a checkpoint's tensors file is expected",),
         kind="not a file", damage="tensors"),
    Case("grid is a FIFO", ("sweep", "{grid}", "--results-dir", "{out}"),
         "a FIFO given as the grid file", ("is a FIFO, not a regular file, where a grid file",),
         kind="not a file", damage="grid"),
    Case("result path is a folder", _run("seq"), "a folder where the run's result file goes",
         ("is a folder, not a regular file, where a result file is expected",),
         kind="not a file", damage="result folder"),
    Case("diverging learning rate", _run("seq", "lr=1e6"),
         "a learning rate of 10^6: the loss explodes in the first experience",
         ("experience 0 diverged during training: the loss reached",
          "no result or checkpoint was written"), kind="diverged run"),
    Case("corrupt result file", _run("seq"),
         "a result file truncated to half its length, then the same run again",
         kind="corrupt result", damage="truncate"),
    Case("result not UTF-8", _run("seq"),
         "a result file with a byte that is not UTF-8, then the same run again",
         kind="corrupt result", damage="latin-1"),
    Case("result nested 100,000 deep", _run("seq"),
         "a result file replaced by 100,000 nested lists, then the same run again",
         kind="corrupt result", damage="deep"),
    Case("result without metrics", _run("seq"),
         "a result file without 'metrics' but with a valid checksum, then the same run again",
         kind="corrupt result", damage="no metrics"),
    Case("result with accuracy 7.0", _run("seq"),
         "a result whose R rows are 7.0, checksum recomputed", kind="corrupt result",
         damage="accuracy 7"),
    Case("result with A_last 1e999", _run("seq"),
         "a result whose class-incremental A_last is 1e999 (infinite), checksum recomputed",
         kind="corrupt result", damage="inf"),
    Case("result without A_last", _run("seq"),
         "a result with metrics.cil = {} and a valid checksum", kind="corrupt result",
         damage="empty cil"),
    Case("pm result under seq's name", _run("seq"),
         "a valid pm result copied over the seq result's file", kind="corrupt result",
         damage="other method"),
    Case("pm result in a sweep's folder",
         ("sweep", "{grid}", "--workers", "1", "--results-dir", "{out}"),
         "a valid pm result copied over the file of the grid's seq run, then the sweep "
         "again", kind="corrupt result", damage="other method",
         grid={"profile": "smoke", "variants": ["seq"], "seeds": [0]}),
    Case("seed-1 result under seed 0's name", _run("seq"),
         "a valid seed-1 result copied over the seed-0 result's file", kind="corrupt result",
         damage="other seed"),
    Case("NaN loss", _run("seq"),
         "the loss poisoned to NaN at step 1 of experience 3 (patched diagnostics plugin; "
         "not reachable from the command line)", kind="nan loss"),
    Case("NaN merge", _run("seq"),
         "the merge of experience 2 returns NaN weights (patched seq merger; not reachable "
         "from the command line)", kind="nan merge"),
    Case("checkpoint naming subprocess:Popen", _run("seq"),
         "a checkpoint whose state.json names the class subprocess:Popen, then the run",
         kind="corrupt checkpoint", damage="popen"),
    Case("truncated checkpoint tensors", _run("seq"),
         "a checkpoint whose tensors file is cut to half (as after a power loss)",
         kind="corrupt checkpoint", damage="truncate"),
    Case("empty checkpoint tensors", _run("seq"),
         "a checkpoint whose tensors file is empty", kind="corrupt checkpoint",
         damage="empty"),
    Case("checkpoint accuracy 7.0", _run("seq"),
         "a checkpoint whose state.json accuracy rows are edited to 7.0",
         kind="corrupt checkpoint", damage="accuracy 7"),
    Case("checkpoint accuracy 7.0, re-signed", _run("seq"),
         "the same edit with the checksum recomputed", kind="corrupt checkpoint",
         damage="accuracy 7 signed"),
    Case("checkpoint of experience 7 of 5", _run("seq"),
         "a checkpoint naming experience 7 of the 5-experience stream (checksum recomputed)",
         kind="corrupt checkpoint", damage="experience 7"),
    Case("checkpoint with NaN weights", _run("seq"),
         "a checkpoint whose model weights are NaN", kind="corrupt checkpoint",
         damage="nan weights"),
    Case("disk full at a checkpoint", _run("seq"),
         "the run resumed with a file-size limit (ulimit -f 16 KiB) below its checkpoint's "
         "size, in a subprocess", kind="no room"),
    Case("SIGTERM to a sweep", ("sweep", "{grid}", "--workers", "2", "--results-dir", "{out}"),
         "clmerge sweep --workers 2 in a subprocess, SIGTERM once both workers have "
         "checkpointed", kind="stopped", damage="SIGTERM",
         grid={"profile": "smoke", "variants": ["seq", "average"],
               "overrides": {"epochs": 100}}),
    Case("SIGKILL to a sweep", ("sweep", "{grid}", "--workers", "2", "--results-dir", "{out}"),
         "clmerge sweep --workers 2 in a subprocess, SIGKILL once both workers have "
         "checkpointed", kind="stopped", damage="SIGKILL",
         grid={"profile": "smoke", "variants": ["seq", "average"],
               "overrides": {"epochs": 100}}),
    Case("Ctrl-C on a sweep", ("sweep", "{grid}", "--workers", "2", "--results-dir", "{out}"),
         "clmerge sweep --workers 2 in a subprocess, SIGINT (Ctrl-C) once both workers "
         "have checkpointed", kind="stopped", damage="SIGINT",
         grid={"profile": "smoke", "variants": ["seq", "average"],
               "overrides": {"epochs": 100}}),
    Case("SIGTERM to a book", ("book", "--profile", "smoke", "--no-html", "--chapters",
                               "04_comparison", "--results-dir", "{out}"),
         "clmerge book in a subprocess, SIGTERM once its chapter's kernel has written a "
         "checkpoint (the kernel and its runs end with it; papermill saves the chapter's "
         "notebook as far as it ran, as on any stop)", kind="stopped",
         damage="SIGTERM"),
    Case("Ctrl-C on a run", _run("seq", "epochs=100"),
         "clmerge run in a subprocess, SIGINT (Ctrl-C) after its first checkpoint",
         kind="stopped", damage="SIGINT"),
    Case("stale temporary file", _run("seq"),
         "a .tmp file that a killed write of the result left behind", kind="stale tmp"),
    Case("concurrent identical run", _run("seq"),
         "the same run while another process holds its result's lock and then writes the "
         "result", kind="concurrent run"),
    Case("killed run", _run("seq", "epochs=40"),
         "the run, in a subprocess, killed with SIGKILL after its checkpoint of experience "
         ">= 1, then started again", kind="killed run"),
]

EXPECTED = {
    "bad input": "exit 2, one sentence naming the problem, nothing written",
    "diverged run": "exit 1, one sentence naming the experience and the stage, nothing "
                    "written",
    "corrupt result": "one line naming the file, recomputed, exit 0",
    "nan loss": "exit 1, one sentence naming the experience, the stage and the step; last "
                "checkpoint kept, no result",
    "nan merge": "exit 1, one sentence naming the experience and the merge; last checkpoint "
                 "kept, no result",
    "corrupt checkpoint": "one warning line, the run starts over, exit 0",
    "stale tmp": "the stale file removed, the result written, exit 0",
    "concurrent run": "waits for the lock, loads the other run's result, exit 0",
    "killed run": "resumes after the last checkpointed experience, exit 0",
    "not a file": "exit 2, one sentence naming the path and what it is, never a read that "
                  "blocks, nothing written",
    "no room": "exit 1, one sentence naming the file and the bytes it needs; no temporary "
               "file left; the last checkpoint kept",
    "stopped": "every process it started ends within 10 s; nothing written after; SIGTERM "
               "and Ctrl-C: one line, exit 143 / 130",
}
EXIT = {"bad input": 2, "diverged run": 1, "not a file": 2}   # kinds that must write nothing
# the kinds that run the command in a subprocess (tens of seconds each: its imports)
SUBPROCESS = ("killed run", "no room", "stopped")


# ---------------------------------------------------------------------- helpers
def _call(argv: list[str], env: dict[str, str] | None = None):
    """``clmerge.cli.main(argv)`` in-process: (exit status or None, stdout, stderr,
    exception raised or None)."""
    out, err = io.StringIO(), io.StringIO()
    code, exc = None, None
    with temporary_environ(env or {}), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(argv))
        except SystemExit as e:  # argparse's own errors
            code = e.code if isinstance(e.code, int) else 1
        except Exception as e:  # noqa: BLE001 - recorded in the table
            exc = e
    return code, out.getvalue(), err.getvalue(), exc


def _snapshot(*roots: Path) -> dict[str, tuple]:
    found = {}
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.stat()
                found[str(p)] = (p.is_dir(), st.st_size, st.st_mtime_ns)
    return found


def _written(before: dict, after: dict, shorten: Callable[[str], str]) -> list[str]:
    """Files new or changed between two snapshots; new folders only when they hold
    no new file (each shortened for display)."""
    changed = [p for p, v in after.items() if before.get(p) != v]
    files = [p for p in changed if not after[p][0]]
    dirs = [p for p in changed if after[p][0] and p not in before
            and not any(f.startswith(p + os.sep) for f in files)]
    return sorted(shorten(p) for p in files) + sorted(shorten(p) + "/" for p in dirs)


def _first_line(text: str, prefix: str | None = None) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if prefix:
        lines = [ln for ln in lines if ln.startswith(prefix)] or lines
    return lines[0] if lines else ""


class _Folder:
    """A case's folder and how its paths are shown (``TMP/...``)."""

    def __init__(self, root: Path, book: bool = False):
        self.root = root
        self.out = root / "out"
        self.data = root / "data"
        self.file = root / "a_file"
        self.grid = root / "grid.yaml"
        # `clmerge book` also writes here, outside --results-dir: watched for book cases
        self.build = BUILD / "executed" if book else None
        self._names = [(str(root.resolve()), "TMP"), (str(root), "TMP"),
                       (str(BUILD.parent), "<repo>")]

    def shorten(self, text: str) -> str:
        for long, short in self._names:
            text = text.replace(long, short)
        return text

    def fill(self, argv) -> list[str]:
        return [a.format(out=self.out, data=self.data, grid=self.grid, file=self.file)
                for a in argv]

    def show(self, argv, env=None) -> str:
        env = " ".join(f"{k}={self.shorten(v)}" for k, v in (env or {}).items())
        cmd = "clmerge " + " ".join(shlex.quote(self.shorten(a)) for a in argv)
        return f"{env} {cmd}".strip()

    def snapshot(self) -> dict:
        return _snapshot(self.root, *([self.build] if self.build else []))


# ---------------------------------------------------------------------- the cases
def _bad_input(case: Case, f: _Folder) -> dict:
    f.data.mkdir()
    f.file.write_text("not a folder\n")
    if case.grid is not None:
        f.grid.write_text(yaml.safe_dump(case.grid, sort_keys=False))
    if case.grid_bytes is not None:
        f.grid.write_bytes(case.grid_bytes)
    argv = f.fill(case.argv)
    env = {k: v.format(data=f.data) for k, v in case.env.items()}
    before = f.snapshot()
    t0 = time.perf_counter()
    code, out, err, exc = _call(argv, env)
    seconds = time.perf_counter() - t0
    written = _written(before, f.snapshot(), f.shorten)
    message = f.shorten(_first_line(err, "clmerge: error:") or _first_line(out)
                        or (f"{type(exc).__name__}: {exc}" if exc else ""))
    missing = [n for n in case.needles if n not in message]
    expected_exit = EXIT[case.kind]
    problems = []
    if code != expected_exit:
        problems.append(f"exit {code}" if exc is None else f"raised {type(exc).__name__}")
    if missing:
        problems.append(f"message lacks {missing}")
    if written:
        problems.append("wrote files")
    return dict(input=f.show(argv, env), exit=code if exc is None else type(exc).__name__,
                message=message, written=written, seconds=seconds,
                outcome="; ".join(problems) or f"exit {expected_exit}, message names the "
                                                f"problem, nothing written",
                as_expected=not problems)


DAMAGE_RESULT = {"truncate": "truncate", "latin-1": "write a byte 0xff into",
                 "deep": "nest 100,000 lists in", "no metrics": "drop 'metrics' (checksum "
                                                           "recomputed) from",
                 "accuracy 7": "set every accuracy of R to 7.0 (checksum recomputed) in",
                 "inf": "set metrics.cil.A_last to 1e999 (checksum recomputed) in",
                 "empty cil": "empty metrics.cil (checksum recomputed) in",
                 "other method": "copy a valid pm result over",
                 "other seed": "copy a valid seed-1 result over"}


def _another_result(f: "_Folder", argv: list[str], damage: str) -> dict:
    """A valid result of another config (pm, or seed 1), computed in a folder aside."""
    aside = f.root / "aside"
    if argv[0] != "run":   # a sweep's folder: the other result comes from a run
        argv = f.fill(_run("seq"))
    argv = [a.replace(str(f.out), str(aside)) for a in argv]
    if damage == "other method":
        argv[argv.index("--method") + 1] = "pm"
    else:
        argv += ["--seed", "1"]
    _call(argv)
    return json.loads(next(aside.glob("*.json")).read_text())


def _damage_result(path: Path, damage: str, other: dict | None = None) -> None:

    text = path.read_text()
    if damage in ("accuracy 7", "inf", "empty cil"):
        result = json.loads(text)
        if damage == "accuracy 7":
            result["R"] = [[7.0 if v is not None else None for v in row] for row in result["R"]]
        elif damage == "inf":
            result["metrics"]["cil"]["A_last"] = float("inf")
        else:
            result["metrics"]["cil"] = {}
        result["checksum"] = checksum(result)
        path.write_text(json.dumps(result).replace("Infinity", "1e999"))
        return
    if damage in ("other method", "other seed"):
        path.write_text(json.dumps(other))
        return
    if damage == "truncate":
        path.write_text(text[: len(text) // 2])
    elif damage == "latin-1":
        path.write_bytes(text.encode()[:20] + b"\xff" + text.encode()[20:])
    elif damage == "deep":
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif damage == "no metrics":
        result = json.loads(text)
        del result["metrics"]
        result["checksum"] = checksum(result)
        path.write_text(json.dumps(result))
    else:
        raise ValueError(f"unknown damage {damage!r}")


def _corrupt_result(case: Case, f: _Folder) -> dict:
    if case.grid is not None:
        f.grid.write_text(yaml.safe_dump(case.grid, sort_keys=False))
    argv = f.fill(case.argv)
    code, out, err, exc = _call(argv)   # a valid result to corrupt
    if code != 0:
        return dict(input=f.show(argv), exit=code, message=f.shorten(_first_line(err or out)),
                    written=[], seconds=0.0, outcome="the first run failed", as_expected=False)
    path = result_path(make_config("seq", profile="smoke"), f.out)
    other = None
    if case.damage in ("other method", "other seed"):
        other = _another_result(f, argv, case.damage)
    _damage_result(path, case.damage, other)
    before = f.snapshot()
    t0 = time.perf_counter()
    code, out, err, exc = _call(argv)
    seconds = time.perf_counter() - t0
    written = _written(before, f.snapshot(), f.shorten)
    message = f.shorten(_first_line(out, "recomputing:") or _first_line(err))
    try:
        valid = read_result(path)["config"]["method"] == "seq"
    except Exception:  # noqa: BLE001
        valid = False
    table = ""
    if argv[0] == "sweep":   # the sweep's table holds the recomputed run, not the other
        try:
            table = ",".join(pd.read_csv(f.out / f"sweep-{f.grid.stem}.csv")["method"])
        except (OSError, KeyError, ValueError):
            table = "unreadable"
        valid = valid and table == "seq"
    ok = code == 0 and message.startswith("recomputing:") and valid
    outcome = ("detected, recomputed, valid result written again"
               + (f"; the sweep's table holds method {table}" if table else "") if ok else
               f"exit {code}, result valid: {valid}, table: {table or '-'}")
    return dict(input=f"{DAMAGE_RESULT[case.damage]} TMP/out/{path.name}, then {f.show(argv)}",
                exit=code,
                message=message, written=written, seconds=seconds, outcome=outcome,
                as_expected=ok)


@contextlib.contextmanager
def _patched(owner, name: str, make):
    """``owner.name`` replaced by ``make(original)`` for the body, then restored."""
    original = getattr(owner, name)
    setattr(owner, name, make(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def _nan_loss_at(experience: int, step: int):
    def make(original):
        def after_backward(self, strategy, **kwargs):
            if strategy.experience.current_experience == experience and self._step == step:
                strategy.loss = strategy.loss * float("nan")
            return original(self, strategy, **kwargs)
        return after_backward
    return make


def _nan_merge_at(experience: int):
    def make(original):
        def merge(self, ctx):
            merged = original(self, ctx)
            if ctx.t == experience:
                merged = {k: v * float("nan") for k, v in merged.items()}
            return merged
        return merge
    return make


def _poison(kind: str):
    """(what is patched, how, the message expected, what the input column says)."""

    if kind == "nan loss":
        return (diagnostics.DiagnosticsPlugin, "after_backward", _nan_loss_at(3, 1),
                "experience 3 diverged during training: the loss became nan at step 1", 2,
                "loss x NaN at step 1 of experience 3")
    return (Sequential, "merge", _nan_merge_at(2),
            "experience 2 diverged during the merge: the merged weights", 1,
            "merged weights x NaN after experience 2")


def _stopped_run(case: Case, f: _Folder) -> dict:
    """A run poisoned with NaN (``nan loss`` or ``nan merge``): exit 1, the last
    checkpoint before the bad experience kept, no result."""

    owner, name, make, needle, kept_expected, note = _poison(case.kind)
    argv = f.fill(case.argv)
    before = f.snapshot()
    t0 = time.perf_counter()
    with _patched(owner, name, make):
        code, out, err, exc = _call(argv)
    seconds = time.perf_counter() - t0
    written = _written(before, f.snapshot(), f.shorten)
    state = checkpoint_path(make_config("seq", profile="smoke"), f.out) / "state.json"
    kept = json.loads(state.read_text())["experience"] if state.exists() else None
    results = list(f.out.glob("*.json"))
    message = (f"{type(exc).__name__}: {exc}".splitlines()[0] if exc is not None
               else f.shorten(_first_line(err or out)))
    ok = (code == 1 and exc is None and needle in message and kept == kept_expected
          and f"checkpoint of experience {kept_expected} is kept" in message and not results)
    outcome = (f"checkpoint of experience {kept} kept; "
               f"{'no result file' if not results else 'a result file was written'}")
    return dict(input=f"{f.show(argv)}  [{note}]",
                exit=code if exc is None else f"raised {type(exc).__name__}", message=message,
                written=written, seconds=seconds, outcome=outcome, as_expected=ok)


def _damage_checkpoint(folder: Path, damage: str, canary: Path) -> None:
    state = folder / "state.json"
    meta = json.loads(state.read_text())
    tensors = folder / meta["tensors"]
    if damage == "popen":  # would run `touch canary` if the class were built and called
        first = next(iter(meta["objects"]))
        meta["objects"][first]["process"] = {
            "__object__": "subprocess:Popen",
            "attrs": {"args": {"__seq__": "list", "items": ["touch", str(canary)]}}}
        meta["checksum"] = checkpoint.state_checksum(meta)   # as a careful forger would
        state.write_text(json.dumps(meta))
    elif damage in ("accuracy 7", "accuracy 7 signed", "experience 7"):
        rows = dict(meta["extra"]["__dict__"])
        if damage == "experience 7":
            meta["experience"] = 7
        else:
            for row in rows["R"]["items"]:
                row["items"] = [7.0] * len(row["items"])
        if damage != "accuracy 7":
            meta["checksum"] = checkpoint.state_checksum(meta)
        state.write_text(json.dumps(meta))
    elif damage == "nan weights":
        from safetensors.torch import load_file, save_file
        tensors_of = load_file(str(tensors))
        for key in meta["model"].values():
            if tensors_of[key].is_floating_point():
                tensors_of[key] = tensors_of[key] * float("nan")
        save_file(tensors_of, str(tensors))
    elif damage == "truncate":
        tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])
    elif damage == "empty":
        tensors.write_bytes(b"")
    else:
        raise ValueError(f"unknown damage {damage!r}")


DAMAGE_CHECKPOINT = {"popen": "add an object of class subprocess:Popen (checksum recomputed) "
                              "to",
                     "accuracy 7": "set every accuracy row to 7.0 in the state.json of",
                     "accuracy 7 signed": "set every accuracy row to 7.0 (checksum "
                                          "recomputed) in the state.json of",
                     "experience 7": "set the experience to 7 (checksum recomputed) in",
                     "nan weights": "multiply every model weight by NaN in",
                     "truncate": "cut to half the tensors file of", "empty": "empty the "
                                                                         "tensors file of"}


def _corrupt_checkpoint(case: Case, f: _Folder) -> dict:
    """A checkpoint (of experience 2, left by a run stopped by a NaN loss in experience 3)
    is damaged; the same command then warns once, starts over and writes the result."""

    argv = f.fill(case.argv)
    cfg = make_config("seq", profile="smoke")
    folder = checkpoint_path(cfg, f.out)
    with _patched(diagnostics.DiagnosticsPlugin, "after_backward", _nan_loss_at(3, 1)):
        code, out, err, exc = _call(argv)
    if code != 1 or not (folder / "state.json").exists():
        return dict(input=f.show(argv), exit=code, message=f.shorten(_first_line(err or out)),
                    written=[], seconds=0.0, outcome="no checkpoint to damage",
                    as_expected=False)
    canary = f.root / "popen-ran"
    _damage_checkpoint(folder, case.damage, canary)
    before = f.snapshot()
    t0 = time.perf_counter()
    code, out, err, exc = _call(argv)
    seconds = time.perf_counter() - t0
    written = _written(before, f.snapshot(), f.shorten)
    message = f.shorten(_first_line(err, "clmerge: warning:") or _first_line(err or out))
    try:
        resumed = read_result(result_path(cfg, f.out))["provenance"]["resumed_after_experience"]
        valid = True
    except Exception:  # noqa: BLE001
        resumed, valid = None, False
    ok = (code == 0 and exc is None and valid and resumed is None and not canary.exists()
          and message.startswith("clmerge: warning: ignoring the checkpoint in ")
          and message.endswith("the run starts over"))
    outcome = ("ignored with a warning; the run started over and wrote its result; nothing "
               "was built from the file" if ok else
               f"exit {code}, result valid: {valid}, resumed after: {resumed}, "
               f"code ran: {canary.exists()}")
    return dict(input=f"{DAMAGE_CHECKPOINT[case.damage]} the checkpoint of experience 2, "
                      f"then {f.show(argv)}",
                exit=code if exc is None else f"raised {type(exc).__name__}", message=message,
                written=written, seconds=seconds, outcome=outcome, as_expected=ok)


def _stale_tmp(case: Case, f: _Folder) -> dict:

    argv = f.fill(case.argv)
    path = result_path(make_config("seq", profile="smoke"), f.out)
    f.out.mkdir(parents=True)
    stale = f.out / f".{path.name}.k1ll3d.tmp"
    stale.write_text('{"partial')
    before = f.snapshot()
    t0 = time.perf_counter()
    code, out, err, exc = _call(argv)
    seconds = time.perf_counter() - t0
    written = _written(before, f.snapshot(), f.shorten)
    try:
        valid = read_result(path)["config"]["method"] == "seq"
    except Exception:  # noqa: BLE001
        valid = False
    ok = code == 0 and exc is None and valid and not stale.exists() and len(written) == 1
    outcome = ("the stale file was removed and the result written" if ok else
               f"exit {code}, result valid: {valid}, stale file left: {stale.exists()}")
    return dict(input=f"write TMP/out/{stale.name}, then {f.show(argv)}",
                exit=code if exc is None else f"raised {type(exc).__name__}",
                message=f.shorten(_first_line(err or out)), written=written,
                seconds=seconds, outcome=outcome, as_expected=ok)


def _concurrent_run(case: Case, f: _Folder) -> dict:
    """Another process (a thread holding the result's lock, as a run does) finishes the
    same result one second later; the run waits and loads it instead of computing."""

    argv = f.fill(case.argv)
    cfg = make_config("seq", profile="smoke")
    elsewhere = f.root / "elsewhere"
    code, out, err, exc = _call([a.replace(str(f.out), str(elsewhere)) for a in argv])
    theirs = result_path(cfg, elsewhere)
    path = result_path(cfg, f.out)
    f.out.mkdir(parents=True)
    holding = threading.Event()

    def other_process():
        with file_lock(path):
            holding.set()
            time.sleep(1.0)
            shutil.copyfile(theirs, path)

    thread = threading.Thread(target=other_process)
    thread.start()
    holding.wait(30)
    before = f.snapshot()
    t0 = time.perf_counter()
    code, out, err, exc = _call(argv)
    seconds = time.perf_counter() - t0
    thread.join()
    written = _written(before, f.snapshot(), f.shorten)
    try:
        loaded = (read_result(path)["provenance"]["started"]
                  == read_result(theirs)["provenance"]["started"])
    except Exception:  # noqa: BLE001
        loaded = False
    message = f.shorten(_first_line(out, "waiting") or _first_line(err or out))
    ok = (code == 0 and exc is None and loaded
          and message.startswith("waiting for another process computing "))
    outcome = ("waited, then loaded the other process's result (not computed again)" if ok
               else f"exit {code}, loaded the other result: {loaded}")
    return dict(input=f"{f.show(argv)}  [another process holds the lock for 1 s, then "
                      f"writes the result]",
                exit=code if exc is None else f"raised {type(exc).__name__}", message=message,
                written=written, seconds=seconds, outcome=outcome, as_expected=ok)


def _killed_run(case: Case, f: _Folder) -> dict:
    argv = f.fill(case.argv)
    cfg = make_config("seq", profile="smoke", overrides={"epochs": 40})
    state = checkpoint_path(cfg, f.out) / "state.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "clmerge.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    done = None
    while time.time() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            if state.exists() and json.loads(state.read_text())["experience"] >= 1:
                break
        time.sleep(0.02)
    finished_first = proc.poll() is not None
    if not finished_first:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    if state.exists():
        done = json.loads(state.read_text())["experience"]
    result_after_kill = result_path(cfg, f.out).exists()
    before = f.snapshot()
    code, out, err, exc = _call(argv)
    seconds = time.perf_counter() - t0
    written = _written(before, f.snapshot(), f.shorten)
    message = f.shorten(_first_line(out, "resuming") or _first_line(err))
    try:
        resumed = read_result(result_path(cfg, f.out))["provenance"]["resumed_after_experience"]
    except Exception:  # noqa: BLE001
        resumed = None
    ok = (not finished_first and not result_after_kill and done is not None
          and code == 0 and resumed == done and message.startswith("resuming"))
    if finished_first:
        outcome = "the subprocess finished before it could be killed"
    else:
        outcome = (f"killed after experience {done} (no result file); the rerun resumed "
                   f"after experience {resumed} and wrote the result")
    return dict(input=f.show(argv) + "  [subprocess, SIGKILL, then again]",
                exit=code if exc is None else f"raised {type(exc).__name__}", message=message,
                written=written, seconds=seconds, outcome=outcome, as_expected=ok)


def _checkpoint_of_experience_2(f: _Folder, argv: list[str]) -> Path:
    """The checkpoint folder a run stopped by a NaN loss in experience 3 leaves (its last
    good checkpoint is of experience 2)."""
    with _patched(diagnostics.DiagnosticsPlugin, "after_backward", _nan_loss_at(3, 1)):
        _call(argv)
    return checkpoint_path(make_config("seq", profile="smoke"), f.out)


def _not_a_file(case: Case, f: _Folder) -> dict:
    """A FIFO (or a folder) where a result, a checkpoint's tensors or a grid is expected:
    exit 2, one sentence, no read that blocks, nothing written."""
    argv = f.fill(case.argv)
    if case.damage == "grid":
        os.mkfifo(f.grid)
        where = "TMP/grid.yaml"
    elif case.damage == "tensors":
        folder = _checkpoint_of_experience_2(f, argv)
        tensors = folder / json.loads((folder / "state.json").read_text())["tensors"]
        tensors.unlink()
        os.mkfifo(tensors)
        where = f.shorten(str(tensors))
    else:
        path = result_path(make_config("seq", profile="smoke"), f.out)
        f.out.mkdir(parents=True)
        os.mkfifo(path) if case.damage == "result" else path.mkdir()
        where = f.shorten(str(path))
    before = f.snapshot()
    t0 = time.perf_counter()
    code, out, err, exc = _call(argv)
    seconds = time.perf_counter() - t0
    written = _written(before, f.snapshot(), f.shorten)
    message = f.shorten(_first_line(err, "clmerge: error:") or _first_line(err or out))
    missing = [n for n in case.needles if n not in message]
    ok = code == 2 and exc is None and not missing and not written
    outcome = ("refused in one sentence without reading it; nothing written" if ok else
               f"exit {code}; message lacks {missing}; wrote {written}")
    kind = "folder" if case.damage == "result folder" else "FIFO"
    return dict(input=f"make {where} a {kind}, then {f.show(argv)}",
                exit=code if exc is None else type(exc).__name__, message=message,
                written=written, seconds=seconds, outcome=outcome, as_expected=ok)


NO_ROOM_BYTES = 16 * 1024   # below the smoke run's checkpoint (about 120 kB), above a state.json


def _limit_file_size():   # in the child, before it runs: ulimit -f
    import resource
    resource.setrlimit(resource.RLIMIT_FSIZE, (NO_ROOM_BYTES, NO_ROOM_BYTES))


def _subprocess(argv: list[str], extra_env: dict[str, str] | None = None,
                **kwargs) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1",
               PYTHONPATH=os.pathsep.join([str(BUILD.parent),
                                           os.environ.get("PYTHONPATH", "")]),
               **(extra_env or {}))
    return subprocess.Popen([sys.executable, "-m", "clmerge.cli", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def _no_room(case: Case, f: _Folder) -> dict:
    """The run resumes from its checkpoint of experience 2 under a file-size limit its
    next checkpoint exceeds: exit 1, one sentence naming the file and the bytes it needs,
    no temporary file left, the checkpoint of experience 2 kept (a rerun resumes)."""
    argv = f.fill(case.argv)
    folder = _checkpoint_of_experience_2(f, argv)
    before = f.snapshot()
    t0 = time.perf_counter()
    proc = _subprocess(argv, preexec_fn=_limit_file_size)
    out, err = proc.communicate(timeout=600)
    seconds = time.perf_counter() - t0
    written = _written(before, f.snapshot(), f.shorten)
    message = f.shorten(_first_line(err, "clmerge: error:") or _first_line(err or out))
    try:
        kept = json.loads((folder / "state.json").read_text())["experience"]
    except (OSError, ValueError, KeyError):
        kept = None
    tmp = [p for p in f.root.rglob("*.tmp")]
    ok = (proc.returncode == 1 and "Traceback" not in err and "cannot write " in message
          and "(it needs " in message and kept == 2 and not tmp
          and not list(f.out.glob("*.json")))
    outcome = (f"stopped in one sentence; no temporary file; the checkpoint of experience "
               f"{kept} kept; no result" if ok else
               f"exit {proc.returncode}; checkpoint kept: {kept}; temporary files: {tmp}")
    return dict(input=f"{f.show(argv)}  [resumed after experience 2 under ulimit -f "
                      f"{NO_ROOM_BYTES // 1024} KiB, in a subprocess]",
                exit="traceback" if "Traceback" in err else proc.returncode,
                message=message, written=written, seconds=seconds, outcome=outcome,
                as_expected=ok)


STOP_WITHIN_S = 10




def _scratch_project(folder: Path) -> Path:
    """A project folder whose chapters, data and book settings are the repository's
    (links) and whose ``_build`` is its own: a book stopped there writes nothing into
    the repository's build."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("chapters", "data", "_config.yml", "_toc.yml", "index.md"):
        if (BUILD.parent / name).exists():
            (folder / name).symlink_to(BUILD.parent / name)
    return folder


def _stopped(case: Case, f: _Folder) -> dict:
    """The command in a subprocess, sent ``case.damage`` (SIGTERM, SIGINT, SIGKILL) once
    its runs have checkpointed: every process it started ends within ``STOP_WITHIN_S``
    seconds, nothing is written after it has ended, no result is written after the signal
    (a book's chapter may have finished runs before); SIGTERM and SIGINT print one line
    and exit 143 / 130."""
    if case.grid is not None:
        f.grid.write_text(yaml.safe_dump(case.grid, sort_keys=False))
    argv = f.fill(case.argv)
    sig = getattr(signal, case.damage)
    runs = 2 if case.argv[0] == "sweep" else 1
    env = None
    if case.argv[0] == "book":   # a project of its own: its build folder is not the repo's
        env = {"CLMERGE_HOME": str(_scratch_project(f.root / "project"))}
        f.build = None   # its _build is under the case folder, watched with it
    t0 = time.perf_counter()
    proc = _subprocess(argv, env, start_new_session=True)
    deadline = time.time() + 600
    while (time.time() < deadline and proc.poll() is None
           and len(list(f.out.glob("_checkpoints/*/state.json"))) < runs):
        time.sleep(0.1)
    tree = descendants(proc.pid)
    before = f.snapshot()
    results = set(f.out.glob("*.json"))   # a book's chapter may have finished runs before
    proc.send_signal(sig)
    sent = time.time()
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    while alive(tree) and time.time() - sent < STOP_WITHIN_S:
        time.sleep(0.1)
    left = alive(tree)
    stopped_s = time.time() - sent
    at_exit = _snapshot(f.out)
    time.sleep(3)   # anything a survivor would write
    late = _written(at_exit, _snapshot(f.out), f.shorten)
    seconds = time.perf_counter() - t0
    written = _written(before, f.snapshot(), f.shorten)
    message = f.shorten(_first_line(err.splitlines()[-1] if err.strip() else ""))
    expect = {"SIGTERM": 143, "SIGINT": 130, "SIGKILL": -signal.SIGKILL}[case.damage]
    line = "clmerge: interrupted; rerun the same command to resume"
    ok = (proc.returncode == expect and not left and not late and "Traceback" not in err
          and set(f.out.glob("*.json")) == results and len(tree) >= runs - 1
          and (case.damage == "SIGKILL" or message == line))
    outcome = (f"{len(tree)} process(es) it started ended within {stopped_s:.1f} s; nothing "
               f"written after; no result" if ok else
               f"exit {proc.returncode}; left running: {left}; written after: {late}")
    return dict(input=f"{f.show(argv)}  [{case.damage} after the first checkpoint(s)]",
                exit="traceback" if "Traceback" in err else proc.returncode,
                message=message, written=written, seconds=seconds, outcome=outcome,
                as_expected=ok)



def as_code(text) -> str:
    """A table cell's text as inline code (HTML-escaped): the inputs and messages are
    what a user types and reads in a terminal, variant labels included."""
    import html
    return f"<code>{html.escape(str(text))}</code>" if str(text) else ""

_KIND = {c.name: c.kind for c in CASES}

RUNNERS = {"bad input": _bad_input, "diverged run": _bad_input,
           "corrupt result": _corrupt_result, "nan loss": _stopped_run,
           "nan merge": _stopped_run, "corrupt checkpoint": _corrupt_checkpoint,
           "stale tmp": _stale_tmp, "concurrent run": _concurrent_run,
           "killed run": _killed_run, "not a file": _not_a_file, "no room": _no_room,
           "stopped": _stopped}


def summary(table: pd.DataFrame) -> dict[str, int]:
    """The counts the appendix reports: cases tried, cases that behaved as expected (for a
    bad input or a diverged run: exit status, one sentence, nothing written), tracebacks
    (an exception escaped ``clmerge.cli.main``), and cases that wrote files where nothing
    may be written (bad inputs, diverged runs)."""
    raised = table.exit.map(lambda e: isinstance(e, str))
    silent = table.case.map(lambda n: _KIND[n] in EXIT)
    return {"cases": len(table), "as expected": int(table.as_expected.sum()),
            "tracebacks": int(raised.sum()),
            "garbage written": int((silent & table.written.map(bool)).sum())}


def run_faults(tmp_dir: str | os.PathLike | None = None,
               names: list[str] | None = None) -> pd.DataFrame:
    """Run the cases (all, or those named) with their folders under ``tmp_dir`` (a fresh
    temporary folder when None) and return one row per case (columns :data:`COLUMNS`;
    ``written`` is a list of the paths that appeared or changed)."""
    root = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.mkdtemp(prefix="faults-"))
    root.mkdir(parents=True, exist_ok=True)
    known = [c.name for c in CASES]
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise ConfigError(f"unknown fault case(s) {unknown}; cases: {', '.join(known)}")
    rows = []
    for i, case in enumerate(CASES):
        if names is not None and case.name not in names:
            continue
        folder = root / f"{i:02d}"
        folder.mkdir()
        row = RUNNERS[case.kind](case, _Folder(folder, book=case.argv[0] == "book"))
        rows.append({"case": case.name, "tests": case.tests, "expected": EXPECTED[case.kind],
                     **row})
    return pd.DataFrame(rows, columns=COLUMNS)


# ---------------------------------------------------------------- the committed table
TABLE = BUILD.parent / "data" / "faults.json"
# what a case's row must repeat whenever it is run again (the rest depends on timing: the
# seconds, and for a case run in a subprocess the files it had written when it was
# stopped and how fast its processes ended)
STABLE = ["case", "input", "tests", "expected", "exit", "message", "as_expected"]


def write_table(table: pd.DataFrame, path: str | os.PathLike = TABLE) -> Path:
    """The table as JSON (a list of rows, with the clmerge version that ran it), for the
    appendix to show without running the cases again."""
    import clmerge

    rows = table.assign(seconds=table.seconds.round(2)).to_dict(orient="records")
    path = Path(path)
    path.write_text(json.dumps({"clmerge_version": clmerge.__version__, "rows": rows},
                               indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_table(path: str | os.PathLike = TABLE) -> tuple[pd.DataFrame, str]:
    """(the committed table, the clmerge version that ran it)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return pd.DataFrame(data["rows"], columns=COLUMNS), data["clmerge_version"]


def stable_differences(live: pd.DataFrame, committed: pd.DataFrame) -> list[str]:
    """Where ``live`` rows differ from the committed ones in :data:`STABLE` columns (and,
    for a case not run in a subprocess, in the files written and the outcome), numbers
    aside (:func:`_shape`): one line per difference, empty when they agree."""
    out = []
    rows = committed.set_index("case")
    for _, r in live.iterrows():
        if r.case not in rows.index:
            out.append(f"{r.case}: not in the committed table")
            continue
        c = rows.loc[r.case]
        cols = STABLE[1:] + ([] if _KIND[r.case] in SUBPROCESS else ["written", "outcome"])
        for col in cols:
            exact = col in ("exit", "as_expected")
            if (r[col] != c[col]) if exact else (_shape(r[col]) != _shape(c[col])):
                out.append(f"{r.case}: {col} is {r[col]!r}, committed {c[col]!r}")
    return out


def _shape(value) -> str:
    """A cell with its numbers and a JSON decoder's complaint masked: a truncated result's
    file ends at a token that varies with the timings the file records, and an outcome
    quotes the seconds a stop took."""
    import re

    text = re.sub(r"\((Expecting|Unterminated|Extra data|Invalid)[^)]*\)", "(JSON)",
                  str(value))
    return re.sub(r"\d+(\.\d+)?", "#", text)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description="Run every fault case and write the table the book's appendix shows.")
    parser.add_argument("--write", metavar="PATH", nargs="?", const=str(TABLE),
                        help=f"write the table (default path: {TABLE})")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clmerge-faults-") as tmp:
        table = run_faults(tmp)
    counts = summary(table)
    print(", ".join(f"{k}: {v}" for k, v in counts.items()))
    if args.write:
        print(f"written: {write_table(table, args.write)}")
    return 0 if counts["as expected"] == counts["cases"] else 1


if __name__ == "__main__":
    sys.exit(main())
