"""Methods that train nothing: they read the frozen pretrained features.

- :class:`ProbeMethod` (``probe``): logistic regression on the standardised features of
  all training data at once (a bound on what any method reaches with these features);
  one row, after the last experience.
- :class:`NMCMethod` (``nmc``): nearest class mean, cosine similarity, experience by
  experience (the frozen-feature reference of arXiv 2210.04428, which reports 83.70 on
  CIFAR-100 in 10 tasks with ViT-B/16).
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from clmerge.strategies.context import RunContext
from clmerge.strategies.method import Method, Row
from clmerge.strategies.template import in_chunks, resolve_amp


@torch.no_grad()
def features(ctx: RunContext, stream) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backbone features (float32), labels and experience ids of every sample of
    ``stream``, in order, the backbone in eval mode and its forward under the config's
    autocast (``amp``)."""
    cfg = ctx.config
    ctx.model.eval()
    dtype = resolve_amp(cfg.amp, cfg.device)
    cast = (torch.autocast(device_type=torch.device(cfg.device).type, dtype=dtype)
            if dtype is not None else contextlib.nullcontext())
    feats, ys, exps = [], [], []
    for e in stream:
        loader = torch.utils.data.DataLoader(e.dataset.eval(), batch_size=cfg.eval_batch_size)
        for x, y, *_ in loader:
            with cast:
                f = in_chunks(ctx.model.backbone, x.to(cfg.device))
            feats.append(f.float().cpu().numpy())
            ys.append(y.numpy())
            exps.append(np.full(len(y), e.current_experience))
    return np.concatenate(feats), np.concatenate(ys), np.concatenate(exps)


class FrozenFeatureMethod(Method):
    """A method on the frozen features of the whole training and test streams, read
    once at the start of :meth:`run`; its records are set by the subclass."""

    def __init__(self, spec, options, ctx: RunContext):
        self._records: list[dict] = []

    @staticmethod
    def stream_features(ctx: RunContext) -> tuple[np.ndarray, ...]:
        """``(x_train, y_train, x_test, y_test, experience_test)``, by :func:`features`."""
        xtr, ytr, _ = features(ctx, ctx.stream.train_stream)
        xte, yte, ete = features(ctx, ctx.stream.test_stream)
        return xtr, ytr, xte, yte, ete

    def records(self) -> list[dict]:
        return self._records


class ProbeMethod(FrozenFeatureMethod):
    """Logistic regression (C = 1, at most 2000 iterations, seeded by the run's seed) on
    standardised frozen features of all training data; class-incremental accuracy is
    the argmax over all classes, task-incremental over the experience's own classes."""

    kind = "probe"

    def run(self, ctx: RunContext, start: int = 0) -> Iterator[Row]:
        t0 = time.perf_counter()
        xtr, ytr, xte, yte, ete = self.stream_features(ctx)
        scaler = StandardScaler().fit(xtr)
        clf = LogisticRegression(max_iter=2000, C=1.0, random_state=ctx.config.seed)
        clf.fit(scaler.transform(xtr), ytr)
        proba = clf.predict_proba(scaler.transform(xte))
        classes = list(clf.classes_)
        pred = np.array(classes)[proba.argmax(1)]
        cil, til = [], []
        for j, cls in enumerate(ctx.stream.classes_per_exp):
            m = ete == j
            cil.append(float((pred[m] == yte[m]).mean()))
            cols = [classes.index(c) for c in cls]
            til_pred = np.array(cls)[proba[m][:, cols].argmax(1)]
            til.append(float((til_pred == yte[m]).mean()))
        self._records = [{"train_seconds": time.perf_counter() - t0}]
        yield cil, til


def unit(a: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


class NMCMethod(FrozenFeatureMethod):
    """Nearest class mean on frozen pretrained features, cosine similarity.

    A continual method that trains nothing: at experience t the mean ``mu_c`` of the
    L2-normalised training features of each class c of experience t is added to the
    class means; a test input x is assigned ``argmax_c cos(f(x), mu_c)`` over every class
    seen so far (class-incremental) or over its experience's classes (task-incremental).
    Row t of ``R`` / ``R_til`` is the accuracy on test experiences 0..t after experience
    t. The backbone's features do not change, so earlier class means never go stale;
    forgetting comes only from new classes competing in the argmax. Computing the
    features of the training data once, rather than once per experience, gives the same
    means.
    """

    kind = "nmc"

    def run(self, ctx: RunContext, start: int = 0) -> Iterator[Row]:
        t0 = time.perf_counter()
        xtr, ytr, xte, yte, ete = self.stream_features(ctx)
        xtr, xte = unit(xtr.astype(np.float64)), unit(xte.astype(np.float64))
        means = np.zeros((ctx.stream.n_classes, xtr.shape[1]))
        rows, tasks = [], []
        seen: list[int] = []
        for t, cls in enumerate(ctx.stream.classes_per_exp):
            for c in cls:
                means[c] = unit(xtr[ytr == c].mean(0, keepdims=True))[0]
            seen.extend(cls)
            sims = xte @ means.T
            cil, til = [], []
            for j in range(t + 1):
                m = ete == j
                pred = np.array(seen)[sims[m][:, seen].argmax(1)]
                cil.append(float((pred == yte[m]).mean()))
                own = ctx.stream.classes_per_exp[j]
                til_pred = np.array(own)[sims[m][:, own].argmax(1)]
                til.append(float((til_pred == yte[m]).mean()))
            rows.append((cil, til))
            tasks.append({"experience": t})
        tasks[-1]["train_seconds"] = time.perf_counter() - t0
        self._records = tasks
        yield from rows
