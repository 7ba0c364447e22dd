"""Chapter helpers: variant labels round-trip, tables and figures from result files."""

import matplotlib
import pytest

matplotlib.use("Agg")

from clmerge.experiment.config import ConfigError  # noqa: E402
from clmerge.experiment.variants import variant_label  # noqa: E402
from clmerge.report import plots, study, tables  # noqa: E402
from clmerge.report.style import color  # noqa: E402


@pytest.mark.parametrize("label,method,overrides", [
    ("seq", "seq", {}),
    ("seq_full", "seq", {"finetune": "full"}),
    ("magmax@ft", "magmax", {"start": "finetuned"}),
    ("pm[eps=0.25]", "pm", {"pm.eps": "0.25"}),
    ("pm_full@ft[perturbation=none]", "pm",
     {"finetune": "full", "start": "finetuned", "pm.perturbation": "none"}),
])
def test_variant_labels_parse_and_round_trip(label, method, overrides):
    assert study.parse_variant(label) == (method, overrides)
    assert variant_label(study.variant_config(label, "smoke")) == label


def test_bad_variant_is_a_config_error():
    with pytest.raises(ConfigError):
        study.parse_variant("pm[eps=0.2")


def test_colours_are_stable_and_variants_differ():
    assert color("pm") == color("pm")
    assert len({color(v) for v in ("pm", "pm[perturbation=none]",
                                   "pm[perturbation=gaussian]")}) == 3


def test_tables_and_figures_from_smoke_results(results_dir):
    df = study.ensure_results(["seq", "pm", "joint"], "smoke", results_dir=results_dir,
                              workers=1)
    assert sorted(df["variant"]) == ["joint", "pm", "seq"]
    summary = tables.summary(df)
    assert list(summary.index) == ["joint", "seq", "pm"]
    assert ("CIL", "A_last") in summary.columns and ("TIL", "forgetting") in summary.columns
    cost = tables.cost(df)
    assert cost.loc["seq", "persisted MiB"] == 0 and cost.loc["pm", "persisted MiB"] > 0
    side = tables.side_by_side(df, "smoke")
    assert side.loc["pm"].iloc[1] == "79.95"       # P&M's ImageNet-R 10-task number
    for fig in (plots.accuracy_heatmaps(df.loc[df["variant"] == "seq", "path"]),
                plots.coefficient_trajectories(df), plots.storage_vs_accuracy(df)):
        assert fig.axes
