"""The glyph streams, the nearest-class-mean reference and the cosine head."""

import dataclasses
import unicodedata

import numpy as np
import pytest
import torch

from clmerge.backbones.heads import CosineLinear, HeadedModel
from clmerge.backbones.mlp import MLPBackbone
from clmerge.benchmarks import glyphs as G
from clmerge.benchmarks.registry import BENCHMARKS
from clmerge.experiment.config import make_config
from clmerge.experiment.runner import Run, run_experiment
from clmerge.pretrain.letters import LETTERS


# ---------------------------------------------------------------- glyph class pool
def test_glyph_classes_are_disjoint_distinct_and_unlike_latin_letters():
    ev, cal = G.class_split()
    assert len(ev) == len(cal) == G.N_CLASSES == 100
    assert not set(ev) & set(cal) and len(set(ev)) == len(set(cal)) == 100
    both = list(ev) + list(cal)
    assert not set(both) & set(LETTERS)
    assert all(unicodedata.decomposition(c) == "" for c in both)
    # the look-alike rule, checked on the final classes: no pair and no Latin letter
    # reaches the threshold
    assert G.similarity(both, list(LETTERS)).max() < G.LOOKALIKE_THRESHOLD
    sim = G.similarity(both, both)
    np.fill_diagonal(sim, 0.0)
    assert sim.max() < G.LOOKALIKE_THRESHOLD


@pytest.mark.parametrize("pair", [("А", "A"), ("ο", "o"), ("Օ", "O"), ("Η", "H")])
def test_known_homoglyphs_reach_the_threshold_and_are_dropped(pair):
    assert G.similarity([pair[0]], [pair[1]])[0, 0] >= G.LOOKALIKE_THRESHOLD
    pool, info = G.class_pool()
    assert pair[0] not in pool and pair[0] in {c for c, _ in info["dropped_latin"]}


@pytest.mark.parametrize("name", ["split_glyphs", "split_glyphs_calibration"])
def test_glyph_streams_have_the_papers_shape(name):
    assert name in BENCHMARKS
    s = BENCHMARKS[name](n_experiences=10, seed=0)
    assert s.n_experiences == 10 and all(len(c) == 10 for c in s.classes_per_exp)
    assert s.input_shape == (1, 28, 28) and s.n_classes == 100
    assert [len(e.dataset) for e in s.train_stream] == [10 * G.N_TRAIN] * 10
    assert [len(e.dataset) for e in s.test_stream] == [10 * G.N_TEST] * 10
    assert G.N_TEST >= 50
    x = torch.stack([s.test_stream[0].dataset[i][0] for i in range(20)])
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) > 0.5


def test_glyph_images_do_not_depend_on_the_run_seed():
    a, b = G.split_glyphs(10, 0), G.split_glyphs(10, 1)
    assert a.classes_per_exp != b.classes_per_exp
    xa = a.scenario.streams["test"][0].dataset
    # same images for the same class, whatever the order of the classes
    c = a.classes_per_exp[0][0]
    e = next(j for j, cl in enumerate(b.classes_per_exp) if c in cl)
    xb = b.scenario.streams["test"][e].dataset

    def of_class(ds):
        return sorted(tuple(ds[i][0].numpy().ravel()[::7].round(4)) for i in range(len(ds))
                      if int(ds[i][1]) == c)
    assert of_class(xa) == of_class(xb)


# ---------------------------------------------------------------- nmc
def _nmc_brute_force(run):
    """Last row of the class-incremental matrix by a plain loop over test items."""
    bb = run.model.backbone.eval()

    def feats(stream):
        out = []
        for e in stream:
            for i in range(len(e.dataset)):
                x, y = e.dataset[i][0], int(e.dataset[i][1])
                with torch.no_grad():
                    out.append((bb(x[None].float())[0].double(), y, e.current_experience))
        return out
    train, test = feats(run.stream.train_stream), feats(run.stream.test_stream)
    means = {}
    for c in range(run.stream.n_classes):
        fs = [f / f.norm() for f, y, _ in train if y == c]
        m = torch.stack(fs).mean(0)
        means[c] = m / m.norm()
    T = run.stream.n_experiences
    hits = np.zeros(T)
    counts = np.zeros(T)
    for f, y, e in test:
        best = max(means, key=lambda c: float(torch.dot(f, means[c]) / f.norm()))
        hits[e] += best == y
        counts[e] += 1
    return list(hits / counts)


def test_nmc_matches_brute_force_and_its_invariants():
    cfg = make_config("nmc", profile="smoke")
    r = run_experiment(cfg, progress=False)
    R, Rt = r["R"], r["R_til"]
    T = cfg.n_experiences
    assert len(R) == T and all(len([v for v in row if v is not None]) == i + 1
                                for i, row in enumerate(R))
    assert R[0][0] == Rt[0][0]                       # one experience: CIL == TIL
    for j in range(T):                               # frozen features: TIL never changes
        assert len({Rt[i][j] for i in range(j, T)}) == 1
        for i in range(j, T):
            assert R[i][j] <= Rt[i][j] + 1e-12       # more candidates never help
    torch.manual_seed(0)
    brute = _nmc_brute_force(Run(cfg))
    assert R[-1] == pytest.approx(brute, abs=1e-9)


# ---------------------------------------------------------------- cosine head
def test_cosine_head_is_scaled_cosine_and_bounded():
    torch.manual_seed(0)
    h = CosineLinear(6, 3, scale=16.0)
    x = torch.randn(5, 6) * 10
    want = 16.0 * torch.nn.functional.cosine_similarity(x[:, None, :], h.weight[None], dim=-1)
    assert torch.allclose(h(x), want, atol=1e-5)
    assert h(x).abs().max() <= 16.0 + 1e-5
    assert torch.allclose(h(3.0 * x), h(x), atol=1e-5)  # invariant to the features' norm


def test_cosine_head_config_is_hash_neutral_at_its_default():
    a = make_config("seq", profile="smoke")
    b = make_config("seq", profile="smoke", overrides={"head": "linear", "head_scale": 16.0})
    c = make_config("seq", profile="smoke", overrides={"head": "cosine"})
    assert a.config_hash() == b.config_hash() != c.config_hash()
    torch.manual_seed(0)
    m = HeadedModel(MLPBackbone((6,), width=8), [[0, 1], [2, 3]], 4, head="cosine", scale=4.0)
    assert all(isinstance(h, CosineLinear) for h in m.heads)
    r = run_experiment(c, progress=False)
    assert r["metrics"]["til"]["A_last"] > 0.6


def test_means_initialised_cosine_heads_without_training_are_the_nmc_classifier():
    """Oracle: with nothing trained (both learning rates 0), cosine heads initialised at
    the class means make seq's matrices those of nmc (argmax of s * cos is argmax cos).

    A learning rate of 0 is refused by ``make_config`` (a run that moves nothing); the
    untrained run is the resolved config with both rates set to 0 afterwards."""
    nmc = run_experiment(make_config("nmc", profile="smoke"), progress=False)
    seq = run_experiment(dataclasses.replace(make_config("seq", profile="smoke", overrides={
        "head": "cosine", "head_init": "means"}), lr=0.0, head_lr=0.0), progress=False)
    for a, b in ((nmc["R"], seq["R"]), (nmc["R_til"], seq["R_til"])):
        for ra, rb in zip(a, b):
            assert rb == pytest.approx(ra, abs=0.01)   # float32 vs float64 near-ties
    trained = run_experiment(make_config("seq", profile="smoke", overrides={
        "head": "cosine", "head_init": "means"}), progress=False)
    assert trained["R"] != seq["R"]
