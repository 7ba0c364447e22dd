"""The final sweep grid (examples/final/) lists every run the book's chapters read."""

import ast
from pathlib import Path

import pytest

from clmerge import book
from clmerge.experiment.config import make_config
from clmerge.experiment.sweep import load_grid
from clmerge.report import findings

ROOT = Path(__file__).resolve().parents[1]
GRIDS = sorted((ROOT / "examples" / "final").glob("*.yaml"))


def _list_parameters(path) -> dict[str, list]:
    out = {}
    for name, p in book.chapter_parameters(path).items():
        try:
            value = ast.literal_eval(p["default"])
        except (ValueError, SyntaxError):
            continue
        out[name] = value
    return out


@pytest.fixture(scope="module")
def grids():
    assert GRIDS, "no grid files under examples/final"
    return [load_grid(g) for g in GRIDS]


def _covered(grids, benchmark, overrides=None):
    """Variants x seeds the grids hold for one benchmark and override set."""
    have = {}
    for g in grids:
        if benchmark in g.benchmarks and g.overrides == (overrides or {}):
            for v in g.variants:
                have.setdefault(v, set()).update(g.seeds)
    return have


def _comparison(grids):
    return next(g for g in grids if g.name == "final-comparison")


def test_every_chapter_variant_is_in_the_grid_with_five_seeds(grids):
    # the book's benchmark: the first of the comparison grid (the profile's default once
    # the final results are in)
    main = _comparison(grids).benchmarks[0]
    have = _covered(grids, main)
    for path in book.chapter_paths():
        if path.stem == "07_regime_map":
            continue
        for name, value in _list_parameters(path).items():
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                missing = [v for v in value if not {0, 1, 2, 3, 4} <= have.get(v, set())]
                assert not missing, (f"{path.stem} parameter {name}: {missing} not in "
                                     f"examples/final/*.yaml with seeds 0-4 on {main}")


def test_findings_variants_on_every_study_benchmark(grids):
    need = findings.variants_needed(findings.load_claims())
    benches = _comparison(grids).benchmarks
    assert len(benches) >= 2
    for b in benches:
        have = _covered(grids, b)
        missing = [v for v in need if not {0, 1, 2, 3, 4} <= have.get(v, set())]
        assert not missing, f"findings need {missing} on {b}"


def test_regime_map_rates_are_in_the_grid(grids):
    params = _list_parameters(book.CHAPTERS / "07_regime_map.ipynb")
    variants = ["seq"] + params["variants"]
    for bench, rates in params["lrs"].items():
        profile_lr = make_config("seq", bench, "quick", 0).lr
        for lr in rates:
            overrides = {} if lr == profile_lr else {"lr": lr}
            have = _covered(grids, bench, overrides)
            missing = [v for v in variants if not {0, 1, 2} <= have.get(v, set())]
            assert not missing, f"regime map {bench} lr {lr}: {missing}"


def test_regime_map_head_check_is_in_the_grid(grids):
    params = _list_parameters(book.CHAPTERS / "07_regime_map.ipynb")
    variants = [params["reference"]] + params["head_check_variants"]
    assert params["head_check"]
    for bench, overrides in params["head_check"].items():
        have = _covered(grids, bench, overrides)
        missing = [v for v in variants if not {0, 1, 2} <= have.get(v, set())]
        assert not missing, f"head check {bench} {overrides}: {missing}"


def test_the_header_states_the_command_and_an_estimate():
    head = (ROOT / "examples" / "final" / "comparison.yaml").read_text()
    assert "clmerge sweep examples/final/*.yaml --workers 2" in head
    assert "perf/sweep_estimate.py" in head and "ESTIMATE" not in head


def test_sweep_estimate_falls_back_from_variant_to_calibration_to_default():
    import importlib.util

    import pandas as pd

    spec = importlib.util.spec_from_file_location("sweep_estimate",
                                                  ROOT / "perf" / "sweep_estimate.py")
    est = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(est)
    rows = [("quick", "split_glyphs", "pm", "pm", 100.0),
            ("quick", "split_glyphs", "pm", "pm[eps=0.25]", 300.0),
            ("quick", "split_glyphs", "seq", "seq", 50.0),
            ("quick", "split_glyphs_calibration", "trm", "trm", 70.0)]
    table = pd.DataFrame(rows, columns=["profile", "benchmark", "method", "variant", "seconds"])
    cfg = make_config("pm", "split_glyphs", "quick", 0)
    assert est.run_seconds(cfg, table, 9.0) == (100.0, "variant")
    cfg = make_config("pm", "split_glyphs", "quick", 0, {"pm.eps": 1.0})
    assert est.run_seconds(cfg, table, 9.0) == (200.0, "method")
    assert est.run_seconds(make_config("ties", "split_glyphs", "quick", 0), table, 9.0) == (
        pytest.approx(150.0), "benchmark")
    assert est.run_seconds(make_config("trm", "split_glyphs", "quick", 0),
                           table[table["method"] == "trm"], 9.0) == (70.0, "variant (calibration)")
    assert est.run_seconds(cfg, table.iloc[:0], 9.0) == (9.0, "default")


def test_sweep_estimate_scales_the_recorded_seconds_per_method():
    import importlib.util

    import pandas as pd

    spec = importlib.util.spec_from_file_location("sweep_estimate",
                                                  ROOT / "perf" / "sweep_estimate.py")
    est = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(est)
    table = pd.DataFrame([("quick", "split_glyphs", "trm", "trm", 100.0),
                          ("quick", "split_glyphs", "seq", "seq", 50.0),
                          ("quick", "split_glyphs", "pm", "pm", 80.0)],
                         columns=["profile", "benchmark", "method", "variant", "seconds"])
    assert est.parse_scale(["trm=0.5", "0.8"]) == {"trm": 0.5, "*": 0.8}
    assert est.scaled(table, {"trm": 0.5, "*": 0.8})["seconds"].tolist() == [50.0, 40.0, 64.0]
    assert est.scaled(table, {"seq": 2.0})["seconds"].tolist() == [100.0, 100.0, 80.0]
    with pytest.raises(SystemExit):
        est.parse_scale(["trm=fast"])
