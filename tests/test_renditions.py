"""The glyph renditions streams: styles, the mix, determinism, the twins' classes, and the
settings that choose them."""

import numpy as np
import pytest

from clmerge.benchmarks import glyphs as G
from clmerge.benchmarks import renditions as R
from clmerge.benchmarks.registry import BENCHMARKS, CLASS_COUNTS, build_stream
from clmerge.errors import ConfigError
from clmerge.experiment.config import make_config

CHARS = ("β", "Г", "ψ", "ч", "Ж")


def test_every_style_maps_a_glyph_into_the_unit_range_and_changes_it():
    rng = np.random.default_rng(0)
    g = G.render_glyph_set(CHARS[:1], 1, 0)[0][0, 0].astype(np.float64)
    for name, fn in R.STYLES.items():
        out = np.clip(fn(np.random.default_rng(1), g), 0, 1)
        assert out.shape == g.shape, name
        if name == "plain":
            assert np.array_equal(out, g)
        else:
            assert np.abs(out - g).mean() > 0.02, name
    assert np.allclose(R.STYLES["inverted"](rng, g), 1 - g)


@pytest.mark.parametrize("text,expected", [
    ("plain", (("plain", 1.0),)),
    ("plain:2,inverted", (("plain", 2 / 3), ("inverted", 1 / 3))),
    (" plain : 1 , outline:3 ", (("plain", 0.25), ("outline", 0.75))),
])
def test_parse_mix(text, expected):
    got = R.parse_mix(text)
    assert [n for n, _ in got] == [n for n, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


def test_an_empty_mix_is_every_style_alike():
    mix = R.parse_mix("")
    assert [n for n, _ in mix] == list(R.STYLES) and {w for _, w in mix} == {0.1}


@pytest.mark.parametrize("bad", ["plain,cubism", "plain:0", "plain:-1", "plain:x",
                                 "plain,plain", "plain:inf"])
def test_bad_mixes_are_refused_in_one_sentence(bad):
    with pytest.raises(ValueError) as e:
        R.parse_mix(bad)
    assert str(e.value).count(".") <= 1 and "\n" not in str(e.value)


@pytest.mark.parametrize("weights,n,expected", [
    ((0.25, 0.25, 0.25, 0.25), 60, [15, 15, 15, 15]),
    ((0.4, 0.2, 0.2, 0.2), 50, [20, 10, 10, 10]),
    ((1 / 3, 1 / 3, 1 / 3), 50, [17, 17, 16]),       # ties go to the earlier style
    ((0.5, 0.5), 1, [1, 0]),
    ((0.7, 0.2, 0.1), 7, [5, 1, 1]),                 # 4.9, 1.4, 0.7: remainders 0.9, 0.4, 0.7
])
def test_style_counts_are_the_largest_remainder_rounding(weights, n, expected):
    mix = tuple((f"s{i}", w) for i, w in enumerate(weights))
    assert R.style_counts(mix, n) == expected


def test_every_class_has_the_same_styles_and_rendering_is_deterministic():
    mix = R.parse_mix("plain:2,inverted,outline,low_contrast")
    x, y, s = R.render_renditions(CHARS, 20, mix, seed=3)
    assert x.shape == (100, 1, 28, 28) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1
    assert np.bincount(y).tolist() == [20] * 5                 # class balance
    for c in range(5):
        assert np.bincount(s[y == c], minlength=4).tolist() == [8, 4, 4, 4]
    again = R.render_renditions(CHARS, 20, mix, seed=3)
    assert np.array_equal(x, again[0]) and np.array_equal(s, again[2])
    other = R.render_renditions(CHARS, 20, mix, seed=4)
    assert not np.array_equal(x, other[0])
    # the styles are mixed within a class, not in blocks
    assert any(len(set(s[y == c][:4])) > 1 for c in range(5))


@pytest.fixture(scope="module")
def twins():
    o = R.Renditions("plain,inverted,outline,low_contrast", 8)
    return {n: BENCHMARKS[n](n_experiences=10, seed=0, options=o) for n in R.BUILDERS}


def test_both_streams_are_registered_and_listed():
    for name in ("glyph_renditions", "glyph_renditions_calibration"):
        assert name in BENCHMARKS and CLASS_COUNTS[name] == 100
        assert R.BUILDERS[name] is BENCHMARKS[name]


def test_the_twins_have_the_papers_shape_disjoint_classes_and_the_same_mix(twins):
    ev, cal = twins["glyph_renditions"], twins["glyph_renditions_calibration"]
    for s in (ev, cal):
        assert s.n_experiences == 10 and s.n_classes == 100 and s.input_shape == (1, 28, 28)
        assert [len(e.dataset) for e in s.train_stream] == [80] * 10
        assert [len(e.dataset) for e in s.test_stream] == [10 * R.N_TEST] * 10
        assert s.info["styles"] == "plain:0.25,inverted:0.25,outline:0.25,low_contrast:0.25"
    assert set(ev.info["classes"]) == set(G.class_split()[0])
    assert set(cal.info["classes"]) == set(G.class_split()[1])
    assert not set(ev.info["classes"]) & set(cal.info["classes"])


def test_train_and_test_hold_the_same_mix_in_every_class():
    mix = R.parse_mix("plain:2,inverted,outline,low_contrast")
    chars, m, xtr, ytr, str_, xte, yte, ste = R._arrays(
        "calibration", "plain:2,inverted,outline,low_contrast", 10)
    assert m == mix
    share = np.array([w for _, w in mix])
    for y, s, n in ((ytr, str_, 10), (yte, ste, R.N_TEST)):
        for c in range(100):
            counts = np.bincount(s[y == c], minlength=len(mix))
            assert counts.tolist() == R.style_counts(mix, n)
            assert np.abs(counts / n - share).max() <= 1 / n   # the same mix up to rounding
    assert np.bincount(ytr).tolist() == [10] * 100 and np.bincount(yte).tolist() == [50] * 100


def test_the_run_seed_orders_classes_not_images():
    o = R.Renditions("plain,inverted", 4)
    a = build_stream("glyph_renditions_calibration", 10, 0, rendition=o)
    b = build_stream("glyph_renditions_calibration", 10, 1, rendition=o)
    assert a.classes_per_exp != b.classes_per_exp
    assert a.info == b.info


def test_the_settings_resolve_from_the_profile_and_are_refused_elsewhere():
    cfg = make_config("seq", "glyph_renditions", "quick", 0)
    cal = make_config("seq", "glyph_renditions_calibration", "quick", 0)
    assert R.Renditions.from_config(cfg) == R.Renditions.from_config(cal)
    R.parse_mix(cfg.rendition_styles)
    # split_glyphs keeps its settings (and its result names)
    assert make_config("seq", "split_glyphs", "quick", 0).config_hash() == "0da5f2986f5c"
    with pytest.raises(ConfigError, match="glyph renditions benchmarks only"):
        make_config("seq", "split_glyphs", "quick", 0, {"rendition_train_per_class": 10})
    with pytest.raises(ConfigError, match="unknown rendition style 'cubism'"):
        make_config("seq", "glyph_renditions", "quick", 0, {"rendition_styles": "cubism"})
