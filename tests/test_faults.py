"""The appendix's fault table (``tools/faults.py``), checked case by case from the
same list the appendix shows: every bad input exits 2 with one sentence naming the
problem (and the valid choices) and writes nothing; a diverged run exits 1 and writes
nothing; corrupt results are recomputed, corrupt checkpoints ignored with a warning; a
NaN loss or merge keeps the last checkpoint and writes no result; a stale temporary file
is removed; a concurrent identical run waits and loads the result. The cases run in a
subprocess (a killed run, a full disk, stopped commands) are one slow test.

The appendix shows the committed table (``data/faults.json``, written by
``python tools/faults.py --write``): every case run here must repeat its row there."""

import os
import sys
from pathlib import Path

import pytest

from clmerge.experiment.config import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import faults  # noqa: E402

BAD = [c for c in faults.CASES if c.kind == "bad input"]
SILENT = [c for c in faults.CASES if c.kind in faults.EXIT]
FAST = [c.name for c in faults.CASES if c.kind not in faults.SUBPROCESS]
SLOW = [c.name for c in faults.CASES if c.kind in faults.SUBPROCESS]
STALE = "the appendix's table (data/faults.json) is stale: rerun python tools/faults.py --write"


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    env = os.environ.get("CLMERGE_DATA")
    df = faults.run_faults(tmp_path_factory.mktemp("faults"), names=FAST)
    assert os.environ.get("CLMERGE_DATA") == env  # the missing-data case restores it
    return df.set_index("case")


def test_the_committed_table_is_what_the_cases_do_now(table):
    committed, _ = faults.read_table()
    assert list(committed["case"]) == [c.name for c in faults.CASES], STALE
    differences = faults.stable_differences(table.reset_index(), committed)
    assert not differences, STALE + ":\n" + "\n".join(differences)


def test_one_row_per_case_in_table_order(table):
    assert list(table.index) == FAST
    assert list(table.reset_index().columns) == faults.COLUMNS
    assert (table.seconds >= 0).all() and table.seconds.max() < 120


@pytest.mark.parametrize("case", SILENT, ids=[c.name for c in SILENT])
def test_bad_input_exits_2_names_the_problem_and_writes_nothing(table, case):
    row = table.loc[case.name]
    assert row.exit == faults.EXIT[case.kind], row.message
    assert row.message.startswith("clmerge: error: ") and "\n" not in row.message
    for needle in case.needles:
        assert needle in row.message
    assert row.written == []
    assert row.as_expected, row.outcome
    if "{out}" in case.argv:
        assert "TMP/out" in row.input  # temp paths are shown as TMP


@pytest.mark.parametrize("name,choices", [
    ("unknown method", ["seq", "pm", "ties", "trm", "magmax"]),
    ("unknown benchmark", ["synthetic", "split_mnist5k", "split_cifar100", "cub200"]),
    ("unknown backbone", ["mlp", "mobilenet_v2", "vit_b16_in21k"]),
    ("unknown profile", ["paper", "quick", "smoke"]),
    ("misspelled setting", ["epochs", "lora_rank", "method options as METHOD.KEY"]),
    ("misspelled method option", ["eps", "p0", "p_plus", "p_minus"]),
    ("option of another method", ["eps", "p0"]),
    ("unknown chapter", ["01_setting", "04_comparison"]),
    ("unknown profile of the book", ["paper", "quick", "smoke"]),
    ("bad sweep grid", ["variants", "seeds"]),
])
def test_message_lists_the_valid_choices(table, name, choices):
    valid = table.loc[name, "message"].split("valid", 1)[-1].split("chapters:", 1)[-1]
    for choice in choices:
        assert choice in valid


@pytest.mark.parametrize("name,reason", [
    ("corrupt result file", ("unreadable result file", "checksum mismatch")),
    ("result not UTF-8", ("not UTF-8 at byte 20",)),
    ("result nested 100,000 deep", ("nested too deeply",)),
    ("result without metrics", ("no 'metrics' dict",)),
    ("result with accuracy 7.0", ("R[0][0] = 7.0 is not an accuracy in [0, 1]",)),
    ("result with A_last 1e999", ("metrics.cil.A_last = inf is outside [0, 1]",)),
    ("result without A_last", ("metrics.cil has no A_last",)),
    ("pm result under seq's name", ("holds the result of another config (method 'pm', "
                                    "not 'seq')",)),
    ("seed-1 result under seed 0's name", ("another config (seed 1, not 0)",)),
    ("pm result in a sweep's folder", ("holds the result of another config (method 'pm', "
                                       "not 'seq')",)),
])
def test_unusable_result_is_named_and_recomputed(table, name, reason):
    row = table.loc[name]
    assert row.exit == 0 and row.as_expected, row.outcome
    assert row.message.startswith("recomputing: TMP/out/seq-synthetic-s0-")
    assert any(r in row.message for r in reason), row.message
    # the unusable file is set aside beside the new one, never read again
    assert row.written[0].endswith(".json") and row.written[1] == row.written[0] + ".corrupt"
    # a sweep also writes its table, which holds the recomputed run only
    assert row.written[2:] == (["TMP/out/sweep-grid.csv"] if row.input.count("sweep") else [])
    assert row.outcome.endswith("holds method seq") == ("sweep" in row.input)


@pytest.mark.parametrize("name,reason", [
    ("checkpoint naming subprocess:Popen", "names class 'subprocess:Popen', which is not a "
                                           "state class"),
    ("truncated checkpoint tensors", "("),
    ("empty checkpoint tensors", "("),
    ("checkpoint accuracy 7.0", "the checksum of its state.json does not match"),
    ("checkpoint accuracy 7.0, re-signed", "its accuracy R[0][0] = 7.0 is not in [0, 1]"),
    ("checkpoint of experience 7 of 5", "it names experience 7 of a stream of 5 experiences"),
    ("checkpoint with NaN weights", "holds non-finite values"),
])
def test_unusable_checkpoint_is_ignored_with_a_warning(table, name, reason):
    row = table.loc[name]
    assert row.exit == 0 and row.as_expected, row.outcome
    assert row.message.startswith("clmerge: warning: ignoring the checkpoint in "
                                  "TMP/out/_checkpoints/seq-synthetic-s0-")
    assert row.message.endswith("; it is set aside (deleted) and the run starts over")
    assert reason in row.message
    assert "nothing was built from the file" in row.outcome


def test_nan_merge_names_the_merge_and_keeps_the_checkpoint(table):
    row = table.loc["NaN merge"]
    assert row.exit == 1 and row.as_expected, row.outcome
    assert row.message.startswith("clmerge: error: experience 2 diverged during the merge: "
                                  "the merged weights ")
    assert row.message.endswith("no result was written and the checkpoint of experience 1 "
                                "is kept")
    assert sorted(p.rsplit("/", 1)[-1] for p in row.written) == ["exp1.safetensors",
                                                                 "state.json"]


def test_diverged_run_writes_nothing(table):
    row = table.loc["diverging learning rate"]
    assert row.exit == 1 and row.written == [] and row.as_expected
    assert row.message.startswith("clmerge: error: experience 0 diverged during training: "
                                  "the loss reached ")
    assert row.message.endswith("no result or checkpoint was written")


def test_stale_tmp_is_removed_and_concurrent_run_waits(table):
    stale = table.loc["stale temporary file"]
    assert stale.exit == 0 and stale.as_expected and len(stale.written) == 1
    both = table.loc["concurrent identical run"]
    assert both.exit == 0 and both.as_expected, both.outcome
    assert both.message.startswith("waiting for another process computing seq-synthetic-s0-")


def test_summary_counts(table):
    counts = faults.summary(table.reset_index())
    assert counts == {"cases": len(FAST), "as expected": len(FAST), "tracebacks": 0,
                      "garbage written": 0}


def test_nan_loss_names_step_and_experience_and_keeps_the_checkpoint(table):
    row = table.loc["NaN loss"]
    assert row.exit == 1 and row.as_expected
    assert row.message == ("clmerge: error: experience 3 diverged during training: the loss "
                           "became nan at step 1; no result was written and the checkpoint of "
                           "experience 2 is kept")
    assert row.outcome == "checkpoint of experience 2 kept; no result file"
    names = sorted(p.rsplit("/", 1)[-1] for p in row.written)
    assert names == ["exp2.safetensors", "state.json"]
    assert all("/_checkpoints/" in p for p in row.written)


def test_nan_patch_is_undone(table):
    from clmerge.plugins import diagnostics
    assert diagnostics.DiagnosticsPlugin.after_backward.__name__ == "after_backward"


def test_a_case_that_does_not_fail_is_reported_as_such(tmp_path, monkeypatch):
    """The table is measured, not asserted: valid input shows exit 0 and the files."""
    ok = faults.Case("valid input", faults._run("seq", "n_experiences=2"), "valid input",
                     ("clmerge: error:",))
    monkeypatch.setattr(faults, "CASES", [ok])
    row = faults.run_faults(tmp_path).iloc[0]
    assert row.exit == 0 and not row.as_expected
    assert row.written and all(p.startswith("TMP/out/") for p in row.written)
    assert "exit 0" in row.outcome and "wrote files" in row.outcome


def test_unknown_case_name_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown fault case\(s\) \['nope'\]; cases: "):
        faults.run_faults(tmp_path, names=["nope"])


@pytest.mark.slow
def test_disk_full_and_stopped_commands_for_real(tmp_path):
    """The rows that run the command in a subprocess: a killed run resumes; a write limit
    below the next checkpoint (one sentence, exit 1, no temporary file, the last checkpoint kept) and
    SIGTERM, SIGKILL and Ctrl-C (every process started ends within 10 s, nothing written
    after, one line and exit 143 / 130)."""
    table = faults.run_faults(tmp_path, names=SLOW).set_index("case")
    for name, row in table.iterrows():
        assert row.as_expected, (name, row.exit, row.message, row.outcome)
    differences = faults.stable_differences(table.reset_index(), faults.read_table()[0])
    assert not differences, STALE + ":\n" + "\n".join(differences)
    assert table.loc["disk full at a checkpoint", "exit"] == 1
    assert "(it needs " in table.loc["disk full at a checkpoint", "message"]
    assert table.loc["SIGTERM to a sweep", "exit"] == 143
    assert table.loc["Ctrl-C on a run", "exit"] == 130
    assert table.loc["Ctrl-C on a sweep", "exit"] == 130
    assert table.loc["Ctrl-C on a run", "message"] == ("clmerge: interrupted; rerun the same "
                                                        "command to resume")
