"""Chapter helpers: variant labels round-trip, tables and figures from result files."""

import matplotlib
import pytest

matplotlib.use("Agg")

from clmerge.experiment.config import ConfigError  # noqa: E402
from clmerge.experiment.variants import variant_label  # noqa: E402
from clmerge.report import plots, study, tables  # noqa: E402
from clmerge.report.names import readable  # noqa: E402
from clmerge.report.style import FIXED, GREY, HUES, MAX_LINES, palette, panels  # noqa: E402


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


@pytest.mark.parametrize("variants", [
    ["pm", "pm[perturbation=none]", "pm[perturbation=gaussian]"],
    ["seq", "average", "ties", "magmax", "lwf", "pm", "trm", "ewc"],
    ["trm[pc=0.0]", "trm[gr=0.0]", "trm", "trm[accumulated=false]"],
])
def test_palette_gives_each_variant_of_a_panel_its_own_hue(variants):
    colours = palette(variants)
    assert len(set(colours.values())) == len(variants)
    assert set(colours.values()) <= set(HUES)
    for v in set(variants) & set(FIXED):   # seq, pm, trm: the same colour in every figure
        assert colours[v] == FIXED[v]


def test_palette_greys_what_is_not_highlighted():
    colours = palette(["seq", "ties", "pm", "dare"], highlight=["seq", "pm"])
    assert colours["ties"] == colours["dare"] == GREY and colours["pm"] == FIXED["pm"]


@pytest.mark.parametrize("n,refs", [(1, 0), (6, 0), (7, 0), (13, 2), (15, 0), (4, 2)])
def test_panels_hold_at_most_six_lines_and_keep_every_variant(n, refs):
    variants = [f"v{i}" for i in range(n)]
    references = variants[:refs]
    groups = panels(variants, references)
    assert [v for g in groups for v in g] == variants[refs:]
    assert all(len(g) + refs <= MAX_LINES for g in groups)
    assert max(map(len, groups)) - min(map(len, groups)) <= 1   # balanced facets


@pytest.mark.parametrize("label,name", [
    ("pm", "P&M"),
    ("pm[p0=0.0,p_minus=0.5,p_plus=0.5]", "P&M, p0=0, p-=0.5, p+=0.5"),
    ("pm[eps=0.25]", "P&M, \u03b5=0.25"),
    ("pm[perturbation=none]", "P&M without perturbation"),
    ("pm[perturbation=none,eps=0.3]", "P&M without perturbation, \u03b5=0.3"),
    ("magmax@ft", "MagMax (fine-tuned start)"),
    ("magmax_full@ft", "MagMax (full fine-tuning, fine-tuned start)"),
    ("seq", "sequential LoRA"),
    ("seq_full", "sequential full fine-tuning"),
    ("trm[pc=0.0]", "TRM without the consistency term"),
    ("trm[trajectory=false]", "TRM without trajectory directions"),
    ("newmethod[k=v]", "newmethod, k=v"),
    ("newmethod[k_x=v]", "newmethod, k x=v"),
    ("not a label", "not a label"),
])
def test_readable_names(label, name):
    assert readable(label) == name


@pytest.mark.parametrize("name,shown", [
    ("cil_A_last", "final class-incremental accuracy"),
    ("til_A_avg std", "average task-incremental accuracy std"),
    ("cil_forgetting", "class-incremental forgetting"),
    ("A_last (%)", "final accuracy (%)"),
    ("ours: split_mnist5k", "ours: Split MNIST-5k"),
    ("a_closed_form", "a closed form"),
    (3, 3),
])
def test_column_names_read_as_words(name, shown):
    from clmerge.report.names import column

    assert column(name) == shown


@pytest.mark.parametrize("name,owned", [("TIES", "TIES'"), ("P&M", "P&M's"),
                                        ("averaging", "averaging's")])
def test_possessives_read_as_english(name, owned):
    from clmerge.report.names import possessive

    assert possessive(name) == owned


@pytest.mark.parametrize("index_name,renamed", [
    (None, True), ("variant", True), ("method", True), ("eps", False), ("task", False)])
def test_readable_index_renames_only_variant_labels(index_name, renamed):
    import pandas as pd
    from clmerge.report.names import readable_index

    frame = pd.DataFrame({"x": [1.0]}, index=pd.Index(["pm[eps=0.25]"], name=index_name))
    out = readable_index(frame)
    assert list(out.index) == (["P&M, \u03b5=0.25"] if renamed else ["pm[eps=0.25]"])
    assert out.index.name == ("method" if renamed else index_name)


@pytest.mark.parametrize("x,text", [(0.000123456, "0.000123"), (1234.5678, "1.23e+03"),
                                    (0.149, "0.149"), (3, "3")])
def test_significant_numbers(x, text):
    from clmerge.report.tables import significant, significant_number

    assert significant_number(x) == text
    import pandas as pd
    html = significant(pd.DataFrame({"v": [float(x)]}, index=pd.Index([1e-3], name="eps")))._repr_html_()
    assert significant_number(float(x)) in html and "eps" in html


def test_tables_and_figures_from_smoke_results(results_dir):
    df = study.ensure_results(["seq", "pm", "joint"], "smoke", results_dir=results_dir,
                              workers=1)
    assert sorted(df["variant"]) == ["joint", "pm", "seq"]
    summary = tables.summary(df)
    assert list(summary.index) == ["joint", "seq", "pm"]
    assert ("CIL", "A_last") in summary.columns and ("TIL", "forgetting") in summary.columns
    # shown as two tables (class- then task-incremental) with readable names
    html = summary._repr_html_()
    assert html.index("class-incremental") < html.index("task-incremental")
    assert "P&amp;M" in html and "joint fine-tuning" in html and ">pm<" not in html
    for _, table in summary.tables():
        assert list(table.index) == ["joint fine-tuning", "sequential LoRA", "P&M"]
    cost = tables.cost(df)
    assert cost.loc["seq", "persisted MiB"] == 0 and cost.loc["pm", "persisted MiB"] > 0
    # joint training keeps its training data: smoke's 32 float32 values per example
    from clmerge.experiment.results import read_result
    n_train = sum(read_result(df.loc[df["variant"] == "joint", "path"].iloc[0])["stream"]["n_train"])
    assert cost.loc["joint", "persisted MiB"] == pytest.approx(n_train * 32 * 4 / 2**20)
    side = tables.side_by_side(df, "smoke")
    assert side.loc["pm"].iloc[1] == "79.95"       # P&M's ImageNet-R 10-task number
    for fig in (plots.accuracy_heatmaps(df.loc[df["variant"] == "seq", "path"]),
                plots.coefficient_trajectories(df), plots.storage_vs_accuracy(df)):
        assert fig.axes


def test_chapters_read_committed_results_and_write_to_scratch(tmp_path, monkeypatch):
    """results_dir=None: read data/results, compute into _build/results, never write the
    committed folder; force recomputes into scratch; an explicit folder is used alone."""
    committed, scratch = tmp_path / "committed", tmp_path / "scratch"
    study.ensure_results(["seq"], "smoke", seeds=[0], results_dir=committed, workers=1)
    before = sorted(p.name for p in committed.iterdir())
    monkeypatch.setattr(study, "DEFAULT_RESULTS", committed)
    monkeypatch.setattr(study, "SCRATCH_RESULTS", scratch)

    df = study.ensure_results(["seq", "average"], "smoke", seeds=[0], workers=1)
    where = {v: str(p).split("/")[-2] for v, p in zip(df["variant"], df["path"])}
    assert where == {"seq": "committed", "average": "scratch"}
    assert sorted(p.name for p in committed.iterdir()) == before

    forced = study.ensure_results(["seq"], "smoke", seeds=[0], force=True, workers=1)
    assert forced["path"].str.contains("/scratch/").all()
    assert sorted(p.name for p in committed.iterdir()) == before
    again = study.ensure_results(["seq"], "smoke", seeds=[0], workers=1)   # scratch first
    assert list(again["path"]) == list(forced["path"])
    assert study.folders(committed) == ([committed], committed)


def test_a_config_error_in_a_chapter_is_one_sentence(capsys):
    """In a kernel, a ConfigError shows as its message alone; the cell still fails."""
    from IPython.core.interactiveshell import InteractiveShell

    from clmerge.report.notebook import one_sentence_errors

    shell = InteractiveShell.instance()
    try:
        assert one_sentence_errors()
        capsys.readouterr()
        result = shell.run_cell("from clmerge.experiment.config import load_profile\n"
                                "load_profile('quik')")
        out = capsys.readouterr()
        shown = (out.out + out.err).strip()
        assert result.error_in_exec is not None                 # the cell failed
        assert shown.startswith("ConfigError: unknown profile 'quik'")
        assert "\n" not in shown and "Traceback" not in shown
        result = shell.run_cell("1 / 0")                         # other errors: unchanged
        out = capsys.readouterr()
        assert isinstance(result.error_in_exec, ZeroDivisionError)
        assert "ZeroDivisionError" in out.out and out.out.count("\n") > 3   # a full traceback
    finally:
        shell.set_custom_exc((), None)
        InteractiveShell.clear_instance()
