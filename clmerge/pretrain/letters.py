"""Synthetic MNIST-like Latin letters rendered from the fonts matplotlib ships.

The pretraining data for the in-project backbones must be disjoint from the digit
streams used later (MNIST, sklearn digits), so it holds only the 52 letters ``a-z A-Z``
(label ``0..25`` = ``a..z``, ``26..51`` = ``A..Z``) and never a digit.

Each image is a white glyph on a black ``size x size`` canvas, like MNIST. A glyph is
rendered once per (font, letter, stroke) at a high resolution and cached; each sample
then draws, from a ``numpy.random.Generator`` seeded by ``seed``:

- a font among DejaVu Sans / Serif / Sans Mono (regular, bold, oblique/italic,
  bold-oblique), STIXGeneral (4 styles) and the Computer Modern ``cm*`` text fonts;
- a stroke weight: the font's own weight plus an optional outline stroke (dilation);
- a rotation in [-15, 15] degrees;
- a size (cap height 13..20 px at 28 px), with a small independent x/y scale jitter,
  so lower-case glyphs stay smaller than capitals (``o`` vs ``O``);
- a shift of up to +-2 px from the centre.

The output depends only on ``(n_per_class, seed, size)`` and the installed font files /
Pillow's FreeType; it takes about a second for 52 x 300 images.
"""

from __future__ import annotations

import os
import string
from functools import lru_cache

import matplotlib
import numpy as np
from matplotlib.ft2font import FT2Font
from PIL import Image, ImageDraw, ImageFont

LETTERS = string.ascii_lowercase + string.ascii_uppercase
N_CLASSES = len(LETTERS)  # 52

# Text fonts in matplotlib's mpl-data/fonts/ttf that carry real Latin letter glyphs.
# Left out on purpose: the *Display fonts and STIXNonUni/STIXSiz* (no letters),
# cmsy10/cmex10 (symbol fonts whose letter slots hold other glyphs), LastResort (boxes).
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf", "cmmi10.ttf",
)

_RENDER_PX = 64          # font size of the cached high-resolution glyphs
_STROKES = (0, 0, 0, 1, 2, 3)  # outline stroke (px at _RENDER_PX), drawn uniformly
_MAX_ROT = 15.0          # degrees
_CAP_RANGE = (13.0, 20.0)  # cap height in px for size=28
_ASPECT_JITTER = 0.12    # independent x / y scale factor in [1 - j, 1 + j]
_MAX_SHIFT = 2           # px for size=28


def font_dir() -> str:
    """matplotlib's bundled TrueType folder (``mpl-data/fonts/ttf``)."""
    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


@lru_cache(maxsize=1)
def font_paths() -> tuple[str, ...]:
    """Paths of the fonts in :data:`FONT_FILES` that exist and map all 52 letters."""
    found = []
    d = font_dir()
    for name in FONT_FILES:
        path = os.path.join(d, name)
        if not os.path.isfile(path):
            continue
        ft = FT2Font(path)
        if all(ft.get_char_index(ord(c)) != 0 for c in LETTERS):
            found.append(path)
    if not found:
        raise RuntimeError(f"no usable letter fonts found in {d}")
    return tuple(found)


@lru_cache(maxsize=None)
def _font(path: str) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, _RENDER_PX)


@lru_cache(maxsize=None)
def _cap_height(path: str) -> float:
    """Height in px of 'H' at ``_RENDER_PX``: the font's reference size."""
    l, t, r, b = _font(path).getbbox("H", anchor="ls")
    return float(b - t)


@lru_cache(maxsize=None)
def _glyph(path: str, letter: str, stroke: int) -> Image.Image:
    """High-resolution white-on-black glyph, cropped to its ink."""
    font = _font(path)
    pad = 3 * _RENDER_PX
    img = Image.new("L", (pad, pad), 0)
    ImageDraw.Draw(img).text((pad // 3, 2 * pad // 3), letter, font=font, fill=255,
                             anchor="ls", stroke_width=stroke, stroke_fill=255)
    box = img.getbbox()
    if box is None:  # pragma: no cover - guarded by font_paths()
        raise RuntimeError(f"empty glyph {letter!r} in {path}")
    return img.crop(box)


def _render_one(rng: np.random.Generator, fonts, label: int, size: int) -> np.ndarray:
    return render_char(rng, fonts, LETTERS[label], size)


def render_char(rng: np.random.Generator, fonts, char: str, size: int) -> np.ndarray:
    """One augmented ``size x size`` image of ``char`` (uint8, white on black): a font
    among ``fonts`` and the stroke, rotation, size, aspect and shift jitter described
    above, all drawn from ``rng`` in that order."""
    path = fonts[int(rng.integers(len(fonts)))]
    stroke = int(_STROKES[int(rng.integers(len(_STROKES)))])
    angle = float(rng.uniform(-_MAX_ROT, _MAX_ROT))
    cap = float(rng.uniform(*_CAP_RANGE)) * size / 28.0
    jx, jy = rng.uniform(1 - _ASPECT_JITTER, 1 + _ASPECT_JITTER, size=2)
    shift = _MAX_SHIFT * size / 28.0
    dx, dy = rng.uniform(-shift, shift, size=2)

    g = _glyph(path, char, stroke)
    g = g.rotate(angle, resample=Image.BILINEAR, expand=True, fillcolor=0)
    box = g.getbbox()
    if box is not None:
        g = g.crop(box)
    f = cap / _cap_height(path)
    w, h = g.size[0] * f * jx, g.size[1] * f * jy
    limit = size - 2.0  # keep a 1 px margin; shrink uniformly if the glyph is too big
    k = min(1.0, limit / max(w, h))
    w, h = max(1, int(round(w * k))), max(1, int(round(h * k)))
    g = g.resize((w, h), resample=Image.BOX if g.size[0] >= w else Image.BILINEAR)

    x0 = int(round((size - w) / 2.0 + dx))
    y0 = int(round((size - h) / 2.0 + dy))
    x0 = min(max(x0, 0), size - w)
    y0 = min(max(y0, 0), size - h)
    out = np.zeros((size, size), dtype=np.uint8)
    out[y0:y0 + h, x0:x0 + w] = np.asarray(g, dtype=np.uint8)
    return out


def render_letters(n_per_class: int, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n_per_class`` images of each of the 52 letters.

    Returns ``X`` (uint8, ``(52 * n_per_class, size, size)``, white on black) and ``y``
    (int64, ``0..25`` = ``a..z``, ``26..51`` = ``A..Z``), in class-major order
    (all ``a`` first). Deterministic for a given ``seed``.
    """
    if n_per_class < 0:
        raise ValueError("n_per_class must be >= 0")
    rng = np.random.default_rng(seed)
    fonts = font_paths()
    y = np.repeat(np.arange(N_CLASSES, dtype=np.int64), n_per_class)
    X = np.zeros((len(y), size, size), dtype=np.uint8)
    for i, label in enumerate(y):
        X[i] = _render_one(rng, fonts, int(label), size)
    return X, y
