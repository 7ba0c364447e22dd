"""Configuration resolution and validation: clear errors that name the valid choices."""

import pytest

from clmerge.experiment.config import ConfigError, make_config, parse_assignments


def test_resolution_order_profile_then_overrides():
    cfg = make_config("seq", profile="smoke")
    assert (cfg.benchmark, cfg.backbone, cfg.epochs) == ("synthetic", "mlp", 1)
    cfg = make_config("seq", profile="smoke", overrides={"epochs": "3", "lr": "0.5"})
    assert cfg.epochs == 3 and cfg.lr == 0.5


def test_hash_changes_with_any_setting_and_is_stable():
    a = make_config("seq", profile="smoke")
    assert a.config_hash() == make_config("seq", profile="smoke").config_hash()
    assert a.config_hash() != make_config("seq", profile="smoke", seed=1).config_hash()
    assert a.config_hash() != make_config("seq", profile="smoke",
                                          overrides={"lora_rank": 5}).config_hash()


@pytest.mark.parametrize("kwargs,needle", [
    (dict(method="nonsense"), "valid methods: seq"),
    (dict(method="seq", benchmark="cifar"), "valid benchmarks: synthetic"),
    (dict(method="seq", profile="nope"), "valid profiles:"),
    (dict(method="seq", overrides={"epoch": 1}), "valid settings .method options as METHOD.KEY.: method"),
    (dict(method="seq", overrides={"epochs": "two"}), "expects an int"),
    (dict(method="seq", overrides={"lora_rank": 0}), "must be >= 1"),
    (dict(method="seq", overrides={"finetune": "half"}), "must be one of lora, full"),
    (dict(method="seq", overrides={"backbone": "resnet"}), "valid backbones:"),
    (dict(method="seq", overrides={"seq.eps": 1}), "takes no options"),
    (dict(method="seq", overrides={"pm.eps": 1}), "belongs to method 'pm'"),
])
def test_bad_input_is_one_clear_error(kwargs, needle):
    kwargs.setdefault("profile", "smoke")
    from clmerge.strategies.methods import get_method
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        get_method(kwargs["method"])
        make_config(**kwargs)


def test_parse_assignments():
    assert parse_assignments(["a=1", "pm.eps = 0.5"]) == {"a": "1", "pm.eps": "0.5"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignments(["novalue"])


def test_full_finetuning_block_applies_before_explicit_overrides(tmp_path, monkeypatch):
    import clmerge.experiment.config as C
    prof = {"defaults": {"benchmark": "synthetic", "backbone": "mlp", "lr": 0.01},
            "finetune_full": {"lr": 0.001}}
    monkeypatch.setattr(C, "load_profile", lambda name: prof)
    assert C.make_config("seq", profile="x").lr == 0.01
    assert C.make_config("seq", profile="x", overrides={"finetune": "full"}).lr == 0.001
    assert C.make_config("seq", profile="x", overrides={"finetune": "full", "lr": 0.5}).lr == 0.5
