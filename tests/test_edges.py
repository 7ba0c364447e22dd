"""Inputs at the edges, at the level of the functions that refuse them: no silent override
(a flag, an option, a YAML key given twice; a setting the run does not use), the bounds
of every numeric option, the LoRA update that would move nothing, a backbone for images
on a stream of vectors, grid keys that are not names, executor resources, the grid's
size, the book's ``-p`` types, and a sweep's table that holds its own runs only. The same
cases through the command line are the fault table (tools/faults.py)."""

import dataclasses
import json
import re

import pytest

from clmerge.book import check_parameter_values, check_parameters, parse_parameters
from clmerge.cli import build_parser
from clmerge.experiment import grid as G
from clmerge.experiment import sweep
from clmerge.experiment.config import (APPLIES, FIELDS, MIN_LORA_UPDATE, ConfigError,
                                       coerce, load_yaml_text, make_config, parse_assignments)
from clmerge.experiment.results import result_path, write_result
from clmerge.experiment.variants import parse_variant, variant_config
from clmerge.strategies.methods import METHODS


# ------------------------------------------------------------------ given twice
@pytest.mark.parametrize("argv,needle", [
    (["run", "--method", "seq", "--method", "pm"], "--method is given twice (seq and pm)"),
    (["run", "--method", "seq", "--seed", "0", "--seed", "1"], "--seed is given twice (0 and 1)"),
    (["run", "--method", "seq", "--benchmark", "a", "--benchmark", "b"], "--benchmark is given"),
    (["run", "--method", "seq", "--out", "a", "--out", "b"], "--out is given twice"),
    (["sweep", "g.yaml", "--workers", "1", "--workers", "2"], "--workers is given twice"),
    (["book", "--profile", "smoke", "--profile", "quick"], "--profile is given twice"),
    (["run", "--method", "seq", "--benchmark", ""], "an empty name"),
    (["run", "--method", " "], "an empty name"),
    (["book", "--chapters"], "expected at least one argument"),
])
def test_a_flag_given_twice_or_empty_is_refused(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    assert needle in capsys.readouterr().err


def test_set_given_twice_names_both_values():
    with pytest.raises(ConfigError, match=re.escape("--set epochs is given twice ('2' and "
                                                    "'3')")):
        parse_assignments(["epochs=2", "epochs=3"])
    assert parse_assignments(["epochs=2", "lr=0.1"]) == {"epochs": "2", "lr": "0.1"}


def test_book_parameter_given_twice_names_both_values():
    with pytest.raises(ConfigError, match=re.escape("-p seeds is given twice ([0] and [1])")):
        parse_parameters(["seeds=[0]", "seeds=[1]"])


def test_variant_option_given_twice_names_both_values():
    with pytest.raises(ConfigError, match=re.escape("sets option 'eps' twice ('0.3' and "
                                                    "'0.4')")):
        parse_variant("pm[eps=0.3,eps=0.4]")


@pytest.mark.parametrize("label,overrides,needle", [
    ("pm[eps=0.3]", {"pm.eps": 0.4}, "sets pm.eps=0.3, and the overrides set pm.eps=0.4"),
    ("seq_full", {"finetune": "lora"}, "sets finetune=full, and the overrides set "
                                       "finetune='lora'"),
])
def test_a_variant_that_contradicts_the_overrides_is_refused(label, overrides, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        variant_config(label, "smoke", None, 0, overrides)
    # the same value twice is no contradiction
    same = parse_variant(label)[1]
    assert variant_config(label, "smoke", None, 0, same) == variant_config(label, "smoke")


@pytest.mark.parametrize("text,needle", [
    ("a: 1\nb: 2\na: 3\n", "gives key 'a' twice (line 1: 1, line 3: 3)"),
    ("overrides: {epochs: 1, epochs: 2}\n", "gives key 'epochs' twice (line 1: 1, line 1: 2)"),
    ("x:\n  - {k: [1], k: [2]}\n", "gives key 'k' twice"),
])
def test_a_yaml_key_given_twice_is_refused(text, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_yaml_text(text, "grid file 'g.yaml'")


# ------------------------------------------------------------------ settings that do not apply
# (setting, a value other than the default, a run that does not use it, one that does)
NOT_USED = {
    "class_order": ("pilot", ("seq", "split_digits", "smoke", {}),
                    ("seq", "split_cifar100", "paper", {})),
    "input_norm": ("half", ("seq", "split_digits", "smoke", {}),
                   ("seq", "split_cifar100", "paper", {})),
    "test_interpolation": ("bicubic", ("seq", None, "smoke", {}),
                           ("seq", "imagenet_r", "paper", {})),
    "crop_scale_min": ("0.5", ("seq", None, "smoke", {}), ("seq", "cub200", "paper", {})),
    "rendition_styles": ("inverted", ("seq", "split_glyphs", "quick", {}),
                         ("seq", "glyph_renditions", "quick", {})),
    "rendition_train_per_class": ("10", ("seq", "split_glyphs", "quick", {}),
                                  ("seq", "glyph_renditions", "quick", {})),
    "imagenet_r_split": ("/etc/passwd", ("seq", None, "smoke", {}),
                         ("seq", "imagenet_r", "paper", {})),
    "cub_split": ("pilot", ("seq", None, "smoke", {}),
                  ("seq", "cub200", "paper", {})),
    "vit_weights": ("orig_in21k", ("seq", None, "smoke", {}),
                    ("seq", "split_cifar100", "paper", {})),
    "pretrained": ("true", ("seq", None, "smoke", {}), ("seq", "split_mnist5k", "quick", {})),
    "image_size": ("64", ("seq", "split_glyphs", "quick", {}),
                   ("seq", "split_mnist5k", "quick", {})),
    "lora_rank": ("2", ("probe", None, "smoke", {}), ("seq", None, "smoke", {})),
    "lora_alpha": ("2", ("seq", None, "smoke", {"finetune": "full"}),
                   ("seq", None, "smoke", {})),
    "head_scale": ("8", ("seq", None, "smoke", {}), ("seq", None, "smoke", {"head": "cosine"})),
    "start": ("finetuned", ("joint", None, "smoke", {}), ("magmax", None, "smoke", {})),
    **{k: (v, ("nmc", None, "smoke", {}), ("seq", None, "smoke", {}))
       for k, v in [("finetune", "full"), ("epochs", "2"), ("batch_size", "16"),
                    ("lr", "0.5"), ("head_lr", "0.5"), ("head", "cosine"),
                    ("head_init", "means"), ("weight_decay", "0.1"),
                    ("num_workers", "1"), ("lr_schedule", "cosine"), ("diag_steps", "3")]},
}


def test_every_setting_that_not_every_run_uses_is_in_the_table():
    assert set(NOT_USED) == set(APPLIES)
    # amp: nmc's and probe's features are computed under the autocast too
    everywhere = {"method", "benchmark", "profile", "seed", "backbone", "n_experiences",
                  "eval_batch_size", "device", "method_args", "amp"}
    assert set(FIELDS) == set(APPLIES) | everywhere


@pytest.mark.parametrize("key", sorted(NOT_USED))
def test_one_rule_for_every_setting_a_run_does_not_use(key):
    value, unused, used = NOT_USED[key]
    method, benchmark, profile, extra = unused
    with pytest.raises(ConfigError, match=re.escape(f"setting {key!r}=") + ".* only; .* does "
                                          "not use it"):
        make_config(method, benchmark, profile, 0, {**extra, key: value})
    base = make_config(method, benchmark, profile, 0, extra)
    # repeating the value the run has anyway changes nothing and is accepted
    assert make_config(method, benchmark, profile, 0,
                       {**extra, key: getattr(base, key)}) == base
    method, benchmark, profile, extra = used   # where it applies, it is taken
    cfg = make_config(method, benchmark, profile, 0, {**extra, key: value})
    assert getattr(cfg, key) == coerce(key, value)


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "vit_letters", "vit_b16_in21k"])
def test_a_backbone_for_images_on_a_stream_of_vectors_is_refused(backbone):
    with pytest.raises(ConfigError, match=f"backbone '{backbone}' takes images, and benchmark "
                                          "'synthetic' is a stream of vectors"):
        make_config("seq", None, "smoke", 0, {"backbone": backbone})


# ------------------------------------------------------------------ bounds
@pytest.mark.parametrize("key,value,needle", [
    ("lr", "1e-400", "setting 'lr' must be >= 1e-12 (a smaller Adam step"),
    ("lr", "0", "setting 'lr' must be >= 1e-12"),
    ("lr", "1e7", "setting 'lr' must be <= 1e+06"),
    ("head_lr", "0", "setting 'head_lr' must be >= 1e-12"),
    ("lora_alpha", "1e38", "setting 'lora_alpha' must be <= 1e+06 (the branch's scale"),
    ("lora_alpha", "0", "setting 'lora_alpha' must be >= 1e-06"),
    ("lora_rank", "5000", "setting 'lora_rank' must be <= 4096 (each adapted weight"),
    ("diag_steps", "2000000", "setting 'diag_steps' must be <= 1000000 (each recorded step"),
    ("weight_decay", "1e7", "setting 'weight_decay' must be <= 1e+06"),
])
def test_settings_past_their_bound_say_the_bound_and_why(key, value, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        make_config("seq", None, "smoke", 0, {key: value})


def test_a_lora_update_that_moves_nothing_is_refused():
    with pytest.raises(ConfigError, match=r"lr x lora_alpha / lora_rank = 2\.5e-17 is below "
                                          r"1e-12"):
        make_config("seq", None, "smoke", 0, {"lr": "1e-11", "lora_alpha": "1e-5"})
    ok = make_config("seq", None, "smoke", 0, {"lr": "1e-9", "lora_alpha": "0.01"})
    assert ok.lr * ok.lora_alpha / ok.lora_rank >= MIN_LORA_UPDATE


def _bounded_options():
    for name, spec in METHODS.items():
        opts = spec.options_class
        for f in dataclasses.fields(opts) if opts else ():
            if "max" in f.metadata:
                yield name, f.name, f.metadata["max"], f.metadata["why"]


@pytest.mark.parametrize("method,option,limit,why", list(_bounded_options()))
def test_method_options_past_their_bound_say_the_bound_and_why(method, option, limit, why):
    spec = METHODS[method]
    assert spec.validate_args({option: limit})[option] == limit
    with pytest.raises(ConfigError, match=re.escape(f"option {method}.{option} must be <= "
                                                    f"{limit} ({why}); got {limit + 1}")):
        spec.validate_args({option: limit + 1})


@pytest.mark.parametrize("option", ["steps", "snapshots", "invert_steps", "random_directions",
                                    "batches"])
def test_every_trm_budget_is_bounded(option):
    assert dict((o, m) for n, o, m, _ in _bounded_options() if n == "trm")[option] < 2**31 - 1
    with pytest.raises(ConfigError, match=f"option trm.{option} must be <= "):
        METHODS["trm"].validate_args({option: 2147483647})


def test_every_committed_config_is_within_the_bounds():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "data"
    for path in [*root.glob("results/*.json"), *root.glob("calibration/results/*.json")]:
        cfg = json.loads(path.read_text())["config"]
        METHODS[cfg["method"]].validate_args(cfg["method_args"])
        for k, v in cfg.items():
            if k != "method_args":
                coerce(k, v)


# ------------------------------------------------------------------ grids
@pytest.mark.parametrize("grid,needle", [
    ({1: "x", "variants": ["seq"]}, "the grid has the key 1, which is not a name"),
    ({None: 1, "variants": ["seq"]}, "the grid has the key None"),
    ({"variants": ["seq"], "overrides": {1: 2}}, "grid key 'overrides' has the key 1"),
    ({"variants": ["seq"], "executor": {1: 2}}, "grid key 'executor' has the key 1"),
    ({"variants": ["seq"], "executor": {"slurm": {None: 2}}}, "executor key 'slurm' has the key"),
    ({"variants": ["seq"], "executor": {"slurm": {"mem_gb": float("inf")}}},
     "slurm parameter 'mem_gb' must be in [0.001, 100000] (finite memory"),
    ({"variants": ["seq"], "executor": {"slurm": {"timeout_min": 0}}},
     "slurm parameter 'timeout_min' must be in [1, 525600]"),
    ({"variants": ["seq"], "executor": {"slurm": {"cpus_per_task": 0}}},
     "slurm parameter 'cpus_per_task' must be in [1,"),
])
def test_bad_grid_keys_and_executor_resources_are_refused(grid, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        G.load_grid({"profile": "smoke", **grid})


def test_a_grid_beyond_the_stated_size_is_refused_before_resolving():
    big = {"profile": "smoke", "variants": [f"pm[eps={i / 1000}]" for i in range(1000)],
           "seeds": list(range(6))}
    with pytest.raises(ConfigError, match=f"holds 6000 runs .* more than {G.MAX_GRID_RUNS}"):
        G.expand_grid(big)


# ------------------------------------------------------------------ book -p
@pytest.mark.parametrize("item,needle", [
    ("benchmarks=42", "-p benchmarks=42: chapter 00_findings expects a list of benchmarks"),
    ("lrs=5", "-p lrs=5: chapter 07_regime_map expects a mapping of benchmarks to lists"),
    ("lrs={split_mnist5k: [-1]}", "expects a mapping of benchmarks to lists"),
    ("loss_threshold=abc", "-p loss_threshold='abc': chapter 03_trajectory_regularized_merging "
                           "expects a finite number or None"),
    ("head_check={split_mnist5k: {lr: abc}}", "-p head_check: setting 'lr' expects a float"),
    ("head_check=[1]", "expects a mapping"),
])
def test_book_parameters_are_type_checked_before_any_chapter(item, needle):
    params = parse_parameters([item])
    with pytest.raises(ConfigError, match=re.escape(needle)):
        check_parameter_values(check_parameters(None, params), "quick")


# ------------------------------------------------------------------ a sweep's table
def test_a_sweep_table_holds_its_own_runs_only(tmp_path, capsys):
    seq = make_config("seq", None, "smoke", 0)
    pm = make_config("pm", None, "smoke", 0)

    def result(cfg):
        return {"name": cfg.run_name(), "variant": cfg.method, "config": cfg.to_dict(),
                "config_hash": cfg.config_hash(), "R": [[0.5]], "R_til": [[0.5]],
                "metrics": {"cil": {"A_last": 0.5}, "til": {"A_last": 0.5}}}
    write_result(result(pm), result_path(seq, tmp_path))    # pm's result under seq's name
    write_result(result(pm), result_path(pm, tmp_path))     # a file of another grid
    df = sweep.collect([seq], tmp_path)
    assert df.empty
    assert "holds the result of another config (method 'pm', not 'seq')" in capsys.readouterr().err
    write_result(result(seq), result_path(seq, tmp_path))
    df = sweep.collect([seq], tmp_path)
    assert list(df["method"]) == ["seq"] and len(df) == 1


@pytest.mark.parametrize("method", ["nmc", "probe"])
def test_amp_is_taken_by_the_methods_that_train_nothing(method):
    """nmc's and probe's features run under the config's autocast, so amp is theirs too."""
    assert make_config(method, None, "smoke", 0, {"amp": "bf16"}).amp == "bf16"
