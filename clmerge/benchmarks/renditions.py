"""Glyph renditions: the glyph classes of :mod:`clmerge.benchmarks.glyphs`, drawn in styles
the letters pretraining never saw.

The role ImageNet-R plays for an ImageNet backbone (renditions of known kinds of object:
cartoons, paintings, sculptures; arXiv 2006.16241, the benchmark of P&M, arXiv
2505.22389): the classes are of the domain the backbone knows (glyphs drawn by the same
renderer, :func:`clmerge.pretrain.letters.render_char`), but every image is drawn in one
of several *styles* that the pretraining on white-on-black Latin letters never shows, so
that frozen features fit the classes less well and fine-tuning pays.

**Styles** (:data:`STYLES`; each a function of the rendered glyph ``g``, white on black
in [0, 1], and of the generator that drew it; every random choice is listed):

- ``plain``: ``g`` itself.
- ``inverted``: ``1 - g`` (black on white).
- ``outline``: the glyph's outer edge, ``max3x3(g) - g`` (3 x 3 maximum filter), scaled
  so that its maximum is 1.
- ``low_contrast``: ``b + c g`` with background ``b ~ U(0.25, 0.55)`` and contrast
  ``c ~ U(0.12, 0.3)``.
- ``noise``: ``clip(g + N(0, s^2))`` per pixel, ``s ~ U(0.2, 0.4)``.
- ``stripes``: ``max(g, a (1 + sin(2 pi (x cos t + y sin t) / p + f)) / 2)``, amplitude
  ``a ~ U(0.35, 0.7)``, angle ``t ~ U(0, pi)``, period ``p ~ U(3, 7)`` px, phase
  ``f ~ U(0, 2 pi)``.
- ``texture``: ``max(g, a u)`` with ``u`` a 7 x 7 uniform noise upsampled bilinearly to
  the image, ``a ~ U(0.4, 0.8)``.
- ``clutter``: ``max(g, lines)``: 2 to 4 straight strokes (end points uniform on the
  canvas, width 1 or 2 px, intensity ``U(0.6, 1)``).
- ``pixelate``: block means over k x k pixels, ``k`` in {3, 4} (box-downsampled to
  ``size // k``, then nearest-neighbour upsampled).
- ``wave``: rows shifted by ``round(A sin(2 pi y / P + f))`` px and then columns by the
  same law with their own draws, ``A ~ U(1, 2.5)``, ``P ~ U(8, 16)``, ``f ~ U(0, 2 pi)``
  (pixels shifted past the border wrap onto black margin, the glyph keeps a 1 px margin
  so little wraps).

**The mix.** A mix names styles with relative weights (``plain:2,inverted:1``; see
:func:`parse_mix`). Every class gets the same number of images of each style: with
``n`` images per class and weights ``w_s`` (summing to 1), the counts are ``n w_s``
rounded by the largest-remainder rule (ties to the earlier style of the mix), so the mix
is the same in every class and, up to that rounding, in train and test. Within a class
the styles are shuffled, then each image is rendered (font, stroke, rotation, size,
aspect and shift jitter of the letters renderer) and styled.

**Two disjoint class sets**, as for the plain glyphs: ``glyph_renditions`` uses the
evaluation classes of ``split_glyphs``, ``glyph_renditions_calibration`` the calibration
classes (:func:`clmerge.benchmarks.glyphs.class_split`). Images are rendered from fixed
seeds (independent of the run seed, other generators than the plain glyph streams'), so
every run sees the same images; the run seed sets the class order.

The mix and the number of training images per class are settings of the run
(``rendition_styles``, ``rendition_train_per_class``; :class:`Renditions`), chosen on
the calibration twin (:mod:`clmerge.experiment.renditions_calibration`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from clmerge.benchmarks import glyphs
from clmerge.benchmarks.stream import Stream, class_incremental_stream
from clmerge.pretrain.letters import render_char

RENDER_SEED = 27     # images of the renditions streams; independent of the run seed
N_TEST = 50          # test images per class


def _plain(rng, g):
    return g


def _inverted(rng, g):
    return 1.0 - g


def _outline(rng, g):
    p = np.pad(g, 1)
    h, w = g.shape
    m = np.max([p[i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=0)
    e = np.clip(m - g, 0.0, 1.0)
    top = float(e.max())
    return e / top if top > 0 else e


def _low_contrast(rng, g):
    b, c = rng.uniform(0.25, 0.55), rng.uniform(0.12, 0.3)
    return b + c * g


def _noise(rng, g):
    s = rng.uniform(0.2, 0.4)
    return g + rng.normal(0.0, s, size=g.shape)


def _stripes(rng, g):
    a, t, p, f = (rng.uniform(0.35, 0.7), rng.uniform(0, np.pi), rng.uniform(3, 7),
                  rng.uniform(0, 2 * np.pi))
    y, x = np.mgrid[0:g.shape[0], 0:g.shape[1]]
    s = a * (1 + np.sin(2 * np.pi * (x * np.cos(t) + y * np.sin(t)) / p + f)) / 2
    return np.maximum(g, s)


def _texture(rng, g):
    a = rng.uniform(0.4, 0.8)
    u = rng.uniform(0, 1, size=(7, 7)).astype(np.float32)
    up = Image.fromarray(u, mode="F").resize(g.shape[::-1], resample=Image.BILINEAR)
    return np.maximum(g, a * np.asarray(up, dtype=np.float64))


def _clutter(rng, g):
    h, w = g.shape
    n = int(rng.integers(2, 5))
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(n):
        x0, x1 = rng.uniform(0, w, size=2)
        y0, y1 = rng.uniform(0, h, size=2)
        width = int(rng.integers(1, 3))
        level = int(round(255 * rng.uniform(0.6, 1.0)))
        draw.line([(x0, y0), (x1, y1)], fill=level, width=width)
    return np.maximum(g, np.asarray(canvas, dtype=np.float64) / 255.0)


def _pixelate(rng, g):
    k = int(rng.choice([3, 4]))
    h, w = g.shape
    img = Image.fromarray(g.astype(np.float32), mode="F")
    small = img.resize((max(1, w // k), max(1, h // k)), resample=Image.BOX)
    return np.asarray(small.resize((w, h), resample=Image.NEAREST), dtype=np.float64)


def _wave(rng, g):
    out = g
    for axis in (0, 1):   # rows shifted along x, then columns along y
        amp, period, phase = rng.uniform(1, 2.5), rng.uniform(8, 16), rng.uniform(0, 2 * np.pi)
        n = out.shape[axis]
        shifts = np.round(amp * np.sin(2 * np.pi * np.arange(n) / period + phase)).astype(int)
        out = (np.stack([np.roll(out[i], shifts[i]) for i in range(n)]) if axis == 0 else
               np.stack([np.roll(out[:, j], shifts[j]) for j in range(n)], axis=1))
    return out


STYLES: dict[str, Callable[[np.random.Generator, np.ndarray], np.ndarray]] = {
    "plain": _plain, "inverted": _inverted, "outline": _outline,
    "low_contrast": _low_contrast, "noise": _noise, "stripes": _stripes,
    "texture": _texture, "clutter": _clutter, "pixelate": _pixelate, "wave": _wave,
}


def parse_mix(text: str) -> tuple[tuple[str, float], ...]:
    """``"plain:2,inverted,outline:1"`` -> ((plain, 0.5), (inverted, 0.25), (outline, 0.25)).

    Comma-separated ``STYLE`` or ``STYLE:WEIGHT`` (relative weights, default 1, positive);
    each style once; an empty text is every style of :data:`STYLES` with weight 1. Raises
    ``ValueError`` with one sentence on a bad mix."""
    text = str(text).strip()
    if not text:
        return tuple((s, 1.0 / len(STYLES)) for s in STYLES)
    items = []
    for part in text.split(","):
        name, _, w = part.strip().partition(":")
        name = name.strip()
        if name not in STYLES:
            raise ValueError(f"unknown rendition style {name!r}; styles: {', '.join(STYLES)}")
        try:
            weight = float(w) if w.strip() else 1.0
        except ValueError:
            raise ValueError(f"rendition style {name!r} has weight {w.strip()!r}, not a number") from None
        if not (weight > 0 and np.isfinite(weight)):
            raise ValueError(f"rendition style {name!r} needs a positive weight; got {w.strip()}")
        if name in (n for n, _ in items):
            raise ValueError(f"rendition style {name!r} appears twice in the mix")
        items.append((name, weight))
    total = sum(w for _, w in items)
    return tuple((n, w / total) for n, w in items)


def style_counts(mix, n: int) -> list[int]:
    """Images per style for ``n`` images of a class: ``n w_s`` by the largest-remainder
    rule (ties to the earlier style), summing to ``n``."""
    exact = [n * w for _, w in mix]
    counts = [int(np.floor(x)) for x in exact]
    order = sorted(range(len(mix)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:n - sum(counts)]:
        counts[i] += 1
    return counts


def render_renditions(chars, n_per_class: int, mix, seed: int, size: int = 28
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n_per_class`` styled images of each glyph, class-major: float32 images in [0, 1]
    of shape ``(len(chars) * n_per_class, 1, size, size)``, int64 labels and the index of
    each image's style in ``mix``."""
    rng = np.random.default_rng(seed)
    fonts = glyphs.glyph_fonts()
    funcs = [STYLES[name] for name, _ in mix]
    per_class = np.repeat(np.arange(len(mix)), style_counts(mix, n_per_class))
    y = np.repeat(np.arange(len(chars), dtype=np.int64), n_per_class)
    style = np.zeros(len(y), dtype=np.int64)
    x = np.zeros((len(y), 1, size, size), dtype=np.float32)
    for c in range(len(chars)):
        style[c * n_per_class:(c + 1) * n_per_class] = rng.permutation(per_class)
    for i, label in enumerate(y):
        g = render_char(rng, fonts, chars[int(label)], size).astype(np.float64) / 255.0
        x[i, 0] = np.clip(funcs[style[i]](rng, g), 0.0, 1.0)
    return x, y, style


@dataclass(frozen=True)
class Renditions:
    """The run settings the renditions streams read (``ExperimentConfig`` fields of the
    same names)."""

    rendition_styles: str = ""
    rendition_train_per_class: int = glyphs.N_TRAIN

    @classmethod
    def from_config(cls, cfg) -> "Renditions":
        return cls(**{k: getattr(cfg, k) for k in cls.__dataclass_fields__})


DEFAULT = Renditions()


@lru_cache(maxsize=4)
def _arrays(which: str, styles: str, n_train: int):
    ev, cal = glyphs.class_split()
    chars = ev if which == "evaluation" else cal
    mix = parse_mix(styles)
    offset = 0 if which == "evaluation" else 1000
    xtr, ytr, str_ = render_renditions(chars, n_train, mix, RENDER_SEED + offset + 1)
    xte, yte, ste = render_renditions(chars, N_TEST, mix, RENDER_SEED + offset + 2)
    return chars, mix, xtr, ytr, str_, xte, yte, ste


def _stream(name: str, which: str, n_experiences: int, seed: int,
            options: Renditions | None) -> Stream:
    o = options or DEFAULT
    if o.rendition_train_per_class < 1:
        raise ValueError("rendition_train_per_class must be >= 1")
    chars, mix, xtr, ytr, str_, xte, yte, ste = _arrays(
        which, o.rendition_styles, int(o.rendition_train_per_class))
    return class_incremental_stream(
        name, xtr, ytr, xte, yte, n_experiences=n_experiences, seed=seed, is_image=True,
        info={"classes": "".join(chars),
              "styles": ",".join(f"{n}:{w:.4g}" for n, w in mix),
              "train_per_class": int(o.rendition_train_per_class),
              "test_per_class": N_TEST})


def glyph_renditions(n_experiences: int = 10, seed: int = 0,
                     options: Renditions | None = None) -> Stream:
    """split_glyphs' 100 classes drawn in styles the letters pretraining never saw (inverted, outline, noise, stripes, ...), mixed alike in every class."""
    return _stream("glyph_renditions", "evaluation", n_experiences, seed, options)


def glyph_renditions_calibration(n_experiences: int = 10, seed: int = 0,
                                 options: Renditions | None = None) -> Stream:
    """Calibration stream (never reported): the renditions of split_glyphs_calibration's 100 classes."""
    return _stream("glyph_renditions_calibration", "calibration", n_experiences, seed, options)


BUILDERS = {"glyph_renditions": glyph_renditions,
            "glyph_renditions_calibration": glyph_renditions_calibration}
