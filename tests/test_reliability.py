"""Bad numbers, bad files and races, at the level of the functions that refuse them: parsing
(finite, bounded, strict bools, keys with their own flag, short messages), result files
(unreadable ones skipped with one line, NaN never written, fsynced 0644 files, stale temp
files), checkpoints (class allowlist, every unreadable form means "start over", nothing
applied from a bad one), the per-result lock and the finite-state guard. The same cases
through the command line are the faults table (tests/test_faults.py)."""

import json
import os
import re
import threading
import time

import pytest
import torch

from clmerge.experiment import atomic, checkpoint
from clmerge.experiment.config import (ConfigError, coerce, coerce_option, load_yaml_text,
                                       make_config, parse_assignments, parse_bool, short)
from clmerge.experiment.results import (CorruptResultError, NonFiniteResultError,
                                        NotRegularFileError, ResultRangeError, checksum,
                                        iter_results, read_result, write_result)
from clmerge.plugins.guard import LOSS_BLOWUP, DivergedError, check_loss, check_tensors


# ------------------------------------------------------------------ parsing numbers
@pytest.mark.parametrize("key,value,expected", [
    ("lr", "1e-3", 1e-3), ("lr", "1e6", 1e6), ("epochs", "3", 3), ("epochs", "1e3", 1000),
    ("epochs", 2.0, 2), ("seed", 2**32 - 1, 2**32 - 1), ("pretrained", "yes", True),
    ("pretrained", "0", False), ("pretrained", "FALSE", False), ("pretrained", 1, True),
])
def test_good_values_are_coerced(key, value, expected):
    got = coerce(key, value)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("key,value,needle", [
    ("lr", "nan", "must be a finite number"), ("lr", "inf", "must be a finite number"),
    ("lr", "-inf", "must be a finite number"), ("head_lr", float("nan"), "finite"),
    ("epochs", "1e20", "must be <= 10000"), ("epochs", 1e20, "must be <= 10000"),
    ("batch_size", "1e20", "must be <= 1000000"), ("epochs", "2.5", "expects an int"),
    ("seed", 2**32, "must be <= 4294967295"), ("seed", -1, "must be >= 0"),
    ("pretrained", "banana", "expects true or false"), ("pretrained", 2, "expects true or"),
    ("epochs", True, "expects an int"), ("epochs", [1, 2], "expects an int"),
    ("n_experiences", 0, "must be >= 1"), ("lr", "1e400", "finite"),
])
def test_bad_values_name_the_key(key, value, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        coerce(key, value)
    assert f"'{key}'" in str(e.value) and len(str(e.value)) < 200


@pytest.mark.parametrize("value,expected", [
    ("true", True), ("False", False), ("1", True), ("0", False), ("yes", True), ("NO", False),
    (True, True), (0, False)])
def test_bool_words(value, expected):
    assert parse_bool("x", value) is expected


@pytest.mark.parametrize("value", ["banana", "", "2", "t", "on", 2, 0.5, None, [True]])
def test_bool_refuses_anything_else(value):
    with pytest.raises(ConfigError, match="expects true or false"):
        parse_bool("option pm.clip", value)


@pytest.mark.parametrize("default,value,expected", [
    (True, "no", False), (0.5, "0.3", 0.3), (0.5, 1, 1.0), (4, "4", 4), (4, 8.0, 8),
    ("global", "per_module", "per_module")])
def test_method_option_coercion(default, value, expected):
    got = coerce_option("option m.k", default, value)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("default,value,needle", [
    (True, "banana", "expects true or false"), (2.0, "nan", "finite"), (2.0, "inf", "finite"),
    (4, "2.5", "expects an int"), (4, 1e20, "at most"), (4, True, "expects an int"),
    ("global", ["a"], "expects a str")])
def test_method_option_refusals(default, value, needle):
    with pytest.raises(ConfigError, match=needle):
        coerce_option("option m.k", default, value)


@pytest.mark.parametrize("overrides,needle", [
    ({"pm.clip": "banana"}, "option pm.clip expects true or false"),
    ({"pm.eps": "nan"}, "option pm.eps must be a finite number"),
])
def test_method_options_through_make_config(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        make_config("pm", profile="smoke", overrides=overrides)


def test_trm_tau_nan_is_refused():
    with pytest.raises(ConfigError, match="option trm.tau must be a finite number"):
        make_config("trm", profile="smoke", overrides={"trm.tau": "nan"})


@pytest.mark.parametrize("item,needle", [
    ("seed=5", "--set cannot change 'seed': it has its own option, --seed 5"),
    ("method=pm", "--method pm"), ("benchmark=split_digits", "--benchmark"),
    ("profile=quick", "--profile"), ("method_args=x", "cannot replace 'method_args'"),
])
def test_set_refuses_keys_with_their_own_flag(item, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_assignments([item])


@pytest.mark.parametrize("key", ["seed", "method", "benchmark", "profile"])
def test_overrides_cannot_change_flag_keys(key):
    with pytest.raises(ConfigError, match=f"cannot change '{key}'"):
        make_config("seq", profile="smoke", overrides={key: 1})


def test_method_args_must_be_a_mapping():
    with pytest.raises(ConfigError, match="'method_args' must be a mapping"):
        make_config("pm", profile="smoke", overrides={"method_args": "x"})


@pytest.mark.parametrize("n,ok", [(1, True), (2, True), (5, True), (10, True), (3, False),
                                  (4, False), (7, False)])
def test_class_split_is_checked_before_any_data(n, ok):
    if ok:
        assert make_config("seq", profile="smoke", overrides={"n_experiences": n}).n_experiences == n
    else:
        with pytest.raises(ConfigError, match=r"must divide the 10 classes of synthetic; got "
                                              rf"{n} \(valid: 1, 2, 5, 10\)"):
            make_config("seq", profile="smoke", overrides={"n_experiences": n})


def test_short_is_short_for_any_value():
    huge = "x" * 10**6
    nested = [[[1] * 1000] * 1000] * 10  # repr would be ~30 MB
    assert len(short(huge)) <= 45
    assert short(nested) == "a list of 10 items"
    assert short({"a": 1}) == "{'a': 1}"
    assert short(3.5) == "3.5"


def test_yaml_alias_bomb_is_refused_quickly():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi"))
    assert len(bomb) < 500
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="more than 100000 values once its aliases"):
        load_yaml_text(bomb, "grid file 'g.yaml'")
    assert time.perf_counter() - t0 < 5


# ------------------------------------------------------------------ result files
def _result(**extra):
    r = {"config": {"method": "seq", "seed": 0}, "metrics": {"cil": {"A_last": 0.5},
                                                            "til": {"A_last": 0.9}},
         "R": [[0.5]], "R_til": [[0.9]], "name": "seq-x"}
    r.update(extra)
    return r


def test_result_is_written_durably_0644_and_read_back(tmp_path):
    path = write_result(_result(), tmp_path / "r.json")
    assert read_result(path)["metrics"]["cil"]["A_last"] == 0.5
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.parametrize("value,where", [
    (float("nan"), "metrics.cil.A_last"), (float("inf"), "metrics.cil.A_last")])
def test_non_finite_result_is_refused_and_nothing_written(tmp_path, value, where):
    bad = _result()
    bad["metrics"]["cil"]["A_last"] = value
    with pytest.raises(NonFiniteResultError, match=f"non-finite number at {where}"):
        write_result(bad, tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("edit,needle", [
    (lambda r: r["R"][0].__setitem__(0, 7.0), "R[0][0] = 7.0 is not an accuracy in [0, 1]"),
    (lambda r: r["R_til"][0].__setitem__(0, -0.01), "R_til[0][0] = -0.01 is not an accuracy"),
    (lambda r: r["metrics"]["cil"].update(A_last=1.5), "metrics.cil.A_last = 1.5 is outside "
                                                      "[0, 1]"),
    (lambda r: r["metrics"]["til"].update(forgetting=-1.5), "metrics.til.forgetting = -1.5 is "
                                                           "outside [-1, 1]"),
    (lambda r: r["metrics"]["til"].pop("A_last"), "metrics.til has no A_last"),
    (lambda r: r["metrics"]["cil"].update(A_last=None), "metrics.cil.A_last = None"),
])
def test_a_result_out_of_range_cannot_be_written_nor_read(tmp_path, edit, needle):
    bad = _result()
    edit(bad)
    with pytest.raises(ResultRangeError, match=re.escape(needle)):
        write_result(bad, tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "r.json").write_text(_checksummed(bad))
    with pytest.raises(CorruptResultError, match=re.escape(needle)):
        read_result(tmp_path / "r.json")


def test_accuracies_at_the_bounds_and_float_error_are_accepted(tmp_path):
    ok = _result(R=[[0.0, 1.0]], R_til=[[1.0 + 2e-16, None]])
    ok["metrics"]["cil"].update(forgetting=-1.0, bwt=1.0, A_avg=None)
    assert read_result(write_result(ok, tmp_path / "r.json"))["R"] == [[0.0, 1.0]]


def test_a_result_is_read_for_its_own_config_only(tmp_path):
    seq = make_config("seq", profile="smoke")
    result = _result(config=seq.to_dict(), config_hash=seq.config_hash())
    path = write_result(result, tmp_path / "r.json")
    assert read_result(path, seq)["config_hash"] == seq.config_hash()
    for other, needle in [(make_config("pm", profile="smoke"), "method 'seq', not 'pm'"),
                          (make_config("seq", profile="smoke", seed=1), "seed 0, not 1"),
                          (make_config("seq", profile="smoke", overrides={"epochs": 2}),
                           "config hash")]:
        with pytest.raises(CorruptResultError, match=re.escape(needle)):
            read_result(path, other)
    # a stored config_hash that its stored config does not give is another config's too
    forged = dict(result, config=dict(seq.to_dict(), epochs=2))
    path = write_result(forged, tmp_path / "f.json")
    with pytest.raises(CorruptResultError, match="config hash"):
        read_result(path, seq)


@pytest.mark.parametrize("make", [os.mkfifo, os.mkdir])
def test_a_result_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path, make):
    make(tmp_path / "r.json")
    t0 = time.perf_counter()
    with pytest.raises(NotRegularFileError, match="r.json is a (FIFO|folder), not a regular"):
        read_result(tmp_path / "r.json")
    assert time.perf_counter() - t0 < 5
    assert [p for p, _ in iter_results(tmp_path)] == []   # readers of a folder skip it


def test_every_committed_result_passes_the_checks():
    """The book is built from these: the stricter reader accepts each for its own config."""
    from pathlib import Path
    from clmerge.experiment.results import stored_config_hash
    root = Path(__file__).resolve().parents[1] / "data"
    paths = sorted([*root.glob("results/*.json"), *root.glob("calibration/results/*.json")])
    assert len(paths) > 400
    for path in paths:
        r = read_result(path)
        assert stored_config_hash(r["config"]) == r["config_hash"], path
        assert path.name == f"{r['name']}.json" and r["name"].endswith(r["config_hash"])


def _checksummed(body: dict) -> str:
    body = dict(body, schema=1)
    body["checksum"] = checksum(body)
    return json.dumps(body)


@pytest.mark.parametrize("content,needle", [
    (b"{\"config\": \xff}", "not UTF-8 at byte"),
    (b"[" * 100_000 + b"]" * 100_000, "unreadable result file"),
    (b"", "unreadable result file"),
    (b"{\"a\": NaN}", "non-finite number NaN"),
    (b"[1, 2]", "not a result (a JSON list)"),
    (_checksummed({k: v for k, v in _result().items() if k != "metrics"}).encode(),
     "no 'metrics' dict"),
    (_checksummed(_result(metrics={"cil": 1})).encode(), "no 'cil' and 'til' metrics"),
    (_checksummed(_result(config={"seed": 0})).encode(), "no method in its config"),
    (json.dumps(_result(checksum="0")).encode(), "checksum mismatch"),
])
def test_unusable_result_files_are_one_corrupt_error(tmp_path, content, needle):
    path = tmp_path / "r.json"
    path.write_bytes(content)
    with pytest.raises(CorruptResultError, match=re.escape(needle)) as e:
        read_result(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_readers_skip_bad_files_with_one_warning_line(tmp_path, capsys):
    write_result(_result(), tmp_path / "good.json")
    (tmp_path / "utf8.json").write_bytes(b"\xff\xfe")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    found = [p.name for p, _ in iter_results(tmp_path)]
    assert found == ["good.json"]
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert all(ln.startswith("clmerge: warning: skipping ") for ln in lines)
    assert any("deep.json" in ln for ln in lines) and any("utf8.json" in ln for ln in lines)


def test_stale_tmp_files_are_removed(tmp_path):
    stale = tmp_path / ".r.json.abc123.tmp"
    other = tmp_path / ".other.json.abc.tmp"
    stale.write_text("partial")
    other.write_text("someone else's")
    assert atomic.remove_stale_tmp(tmp_path, "r.json") == [stale]
    assert not stale.exists() and other.exists()


# ------------------------------------------------------------------ output folder
def test_output_folder_checks(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="empty path"):
        atomic.check_output_folder("")
    with pytest.raises(ConfigError, match="is not a folder"):
        atomic.check_output_folder(afile / "sub")
    assert atomic.check_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probe is gone


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_output_folder_under_proc_is_refused():
    with pytest.raises(ConfigError, match="is not writable"):
        atomic.check_output_folder("/proc/x")


# ------------------------------------------------------------------ the lock
def test_second_process_waits_for_the_lock(tmp_path):
    target = tmp_path / "r.json"
    events = []
    inside = threading.Event()

    def first():
        with atomic.file_lock(target):
            inside.set()
            time.sleep(0.3)
            events.append("first done")

    t = threading.Thread(target=first)
    t.start()
    inside.wait(5)
    with atomic.file_lock(target, on_wait=lambda: events.append("waited")):
        events.append("second in")
    t.join()
    assert events == ["waited", "first done", "second in"]
    assert not (tmp_path / "r.json.lock").exists()


# ------------------------------------------------------------------ checkpoints
class _Holder:
    def __init__(self):
        self.count = 0
        self.values = [1.0]


def _saved(tmp_path):
    model = torch.nn.Linear(3, 2)
    holder = _Holder()
    holder.count, holder.values = 7, [2.0, 3.0]
    gen = torch.Generator().manual_seed(1)
    extra = {"R": [[0.5]], "R_til": [[0.9]], "rng": checkpoint.rng_state({"loader": gen})}
    checkpoint.save(tmp_path, 0, "h", model, {"holder": holder}, extra)
    return model


def _load(tmp_path, n_experiences=5):
    fresh, holder = torch.nn.Linear(3, 2), _Holder()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    got = checkpoint.load(tmp_path, "h", fresh, {"holder": holder}, n_experiences)
    untouched = all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    return got, holder, untouched


def test_checkpoint_round_trip(tmp_path):
    model = _saved(tmp_path)
    fresh, holder = torch.nn.Linear(3, 2), _Holder()
    done, extra = checkpoint.load(tmp_path, "h", fresh, {"holder": holder})
    assert done == 0 and extra["R"] == [[0.5]] and holder.values == [2.0, 3.0]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 fresh.state_dict().values()))
    assert not list(tmp_path.glob(".*.tmp"))


def _edit_state(tmp_path, edit, sign=True):
    """Edit state.json; with ``sign``, its checksum is recomputed (as a careful forger
    would), so the checks behind the checksum are the ones tried."""
    state = tmp_path / "state.json"
    meta = json.loads(state.read_text())
    edit(meta)
    if sign:
        meta["checksum"] = checkpoint.state_checksum(meta)
    state.write_text(json.dumps(meta))


def _nan_weights(tmp_path):
    from safetensors.torch import load_file, save_file
    path = tmp_path / "exp0.safetensors"
    tensors = load_file(str(path))
    key = json.loads((tmp_path / "state.json").read_text())["model"]["weight"]
    tensors[key] = tensors[key] * float("nan")
    save_file(tensors, str(path))


def _popen(meta):
    meta["objects"]["holder"]["proc"] = {"__object__": "subprocess:Popen",
                                         "attrs": {"args": ["true"]}}


@pytest.mark.parametrize("damage,needle", [
    (lambda p: _edit_state(p, _popen), "names class 'subprocess:Popen'"),
    (lambda p: _edit_state(p, lambda m: m["objects"]["holder"].update(
        x={"__object__": "clmerge.tensormath.tensordict:os.system", "attrs": {}})),
     "not a class defined in"),
    (lambda p: _edit_state(p, lambda m: m.update(tensors="../../etc/passwd")),
     "bad tensors file name"),
    (lambda p: (p / "exp0.safetensors").write_bytes(b""), ""),
    (lambda p: (p / "exp0.safetensors").write_bytes(
        (p / "exp0.safetensors").read_bytes()[:100]), ""),
    (lambda p: (p / "exp0.safetensors").unlink(), ""),
    (lambda p: (p / "state.json").write_bytes(b"\xff{"), ""),
    (lambda p: (p / "state.json").write_text("[" * 100_000), ""),
    (lambda p: (p / "state.json").write_text("{}"), ""),
    (lambda p: _edit_state(p, lambda m: m.update(experience=3)), "do not match its experience"),
    (lambda p: _edit_state(p, lambda m: m["extra"]["__dict__"][0][1]["items"][0]["items"]
                           .__setitem__(0, 7.0), sign=False), "checksum of its state.json"),
    (lambda p: _edit_state(p, lambda m: m["extra"]["__dict__"][0][1]["items"][0]["items"]
                           .__setitem__(0, 7.0)), "R[0][0] = 7.0 is not in [0, 1]"),
    (lambda p: _edit_state(p, lambda m: m["extra"]["__dict__"][1][1]["items"][0]["items"]
                           .__setitem__(0, -0.5)), "R_til[0][0] = -0.5 is not in [0, 1]"),
    (lambda p: _edit_state(p, lambda m: m["extra"]["__dict__"][0][1]["items"][0]["items"]
                           .append(0.5)), "row R[0] does not hold 1 accuracies"),
    (lambda p: _edit_state(p, lambda m: m.update(experience=7)),
     "names experience 7 of a stream of 5 experiences"),
    (_nan_weights, "tensor weight holds non-finite values"),
    (lambda p: _edit_state(p, lambda m: m["model"].pop("bias")), "not the run's model's"),
    (lambda p: _edit_state(p, lambda m: m["objects"].update(ghost={})), "objects are not"),
    (lambda p: _edit_state(p, lambda m: m["objects"]["holder"].update(
        __class__={"__size__": [1]})), "attribute name"),
])
def test_unusable_checkpoint_means_start_over(tmp_path, capsys, damage, needle):
    folder = tmp_path / "ckpt"
    _saved(folder)
    damage(folder)
    other = (folder / "state.json").read_text(errors="replace") == "{}"
    got, holder, untouched = _load(folder)
    err = capsys.readouterr().err
    if other:
        assert got is None and err == ""  # another config's checkpoint (no hash): not used
        return
    assert got is None and untouched and holder.count == 0, err
    assert err.startswith("clmerge: warning: ignoring the checkpoint in ")
    assert err.rstrip().endswith("it is set aside (deleted) and the run starts over")
    assert err.count("\n") == 1
    assert needle in err
    assert not folder.exists()   # set aside: a rerun does not meet it again


def test_state_json_carries_its_checksum(tmp_path):
    _saved(tmp_path)
    meta = json.loads((tmp_path / "state.json").read_text())
    body = {k: v for k, v in meta.items() if k != "checksum"}
    import hashlib
    assert meta["checksum"] == hashlib.sha256(json.dumps(
        body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@pytest.mark.parametrize("name", ["state.json", "exp0.safetensors"])
def test_a_fifo_in_a_checkpoint_is_refused_without_blocking(tmp_path, name):
    from clmerge.experiment.results import NotRegularFileError
    _saved(tmp_path)
    (tmp_path / name).unlink()
    os.mkfifo(tmp_path / name)
    t0 = time.perf_counter()
    with pytest.raises(NotRegularFileError, match=f"{name} is a FIFO, not a regular file"):
        _load(tmp_path)
    assert time.perf_counter() - t0 < 5 and (tmp_path / name).exists()


def test_popen_is_never_imported_or_built(tmp_path, monkeypatch):
    imported = []
    real = checkpoint.importlib.import_module
    monkeypatch.setattr(checkpoint.importlib, "import_module",
                        lambda name, *a: imported.append(name) or real(name, *a))
    _saved(tmp_path)
    _edit_state(tmp_path, _popen)
    assert _load(tmp_path)[0] is None and imported == []
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.state_class("subprocess:Popen")
    assert checkpoint.state_class(
        "clmerge.tensormath.pm_coefficient:RunningFisherSums").__name__ == "RunningFisherSums"


# ------------------------------------------------------------------ the guard
def test_loss_guard():
    check_loss(0.7, None, 0, 0)
    check_loss(LOSS_BLOWUP * 0.99, 0.5, 0, 3)  # below 1000 x max(1, first)
    with pytest.raises(DivergedError, match="experience 2 diverged during training: the loss "
                                            "reached 5.56e\\+11 at step 1, more than 1000 times"):
        check_loss(5.56e11, 0.7, 2, 1)
    with pytest.raises(DivergedError, match="the loss became nan at step 4"):
        check_loss(float("nan"), 0.7, 1, 4)


def test_tensor_guard_names_the_first_bad_tensor():
    good = {"a": torch.ones(3), "b": torch.zeros(2, dtype=torch.long)}
    check_tensors(good, 0, "the merge", "the merged weights")
    bad = {"a": torch.ones(3), "w1": torch.tensor([1.0, float("nan")]),
           "w2": torch.tensor([float("inf")])}
    with pytest.raises(DivergedError, match="experience 4 diverged during the merge: the merged "
                                            "weights 'w1' and 1 more hold NaN or infinite") as e:
        check_tensors(bad, 4, "the merge", "the merged weights")
    assert isinstance(e.value, FloatingPointError) and e.value.experience == 4
