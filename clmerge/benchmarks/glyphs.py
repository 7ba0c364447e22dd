"""Split glyphs: a 100-class, 10-experience stream of rendered non-Latin glyphs.

The shape of the papers' benchmarks (CIFAR-100 in 10 tasks, arXiv 2505.22389) on a
domain the in-project ViT knows: the backbone ``vit_letters`` is pretrained on the 52
rendered Latin letters (:mod:`clmerge.pretrain.letters`), and these streams hold glyphs
of other scripts, drawn by the same renderer with the same augmentations (font, stroke,
rotation, size, aspect and shift jitter), so the domain is the same and the classes are
new.

**Class pool.** Letters of the Greek (U+0391-03C9), Cyrillic (U+0400-045F), Armenian
(U+0531-0587) and Georgian (U+10D0-10FA) blocks and the arrows (U+2190-21FF), rendered
from the 12 DejaVu fonts matplotlib ships (Sans, Serif, Sans Mono; regular, bold,
oblique/italic, bold-oblique), the only bundled fonts that cover every one of them
(the LastResort font, which draws every code point as a box, is never used). A
code point is kept only if every one of these fonts maps it and it is not a precomposed
character (a base letter plus a diacritic, like ``Ё``, or an arrow with an overlaid
stroke, like ``↚``): those differ from another class, or from a Latin letter, by a mark
of a few pixels.

**Look-alikes are dropped**, so that labels are learnable and no class is a letter the
backbone was pretrained on. Each glyph has a template per font: drawn without
augmentation, scaled by the font's cap height as the renderer does, centred on a
28 x 28 canvas and blurred (Gaussian, sigma 1 px). The similarity of two glyphs is the
mean over the 12 fonts of the cosine similarity of their mean-centred templates. A
glyph is dropped when its similarity to any Latin letter ``a-z A-Z`` reaches
``LOOKALIKE_THRESHOLD`` (Cyrillic ``А`` and Latin ``A``, Greek ``ο`` and ``o``); then,
in code-point order, a glyph is dropped when its similarity to a glyph already kept
reaches the threshold (Greek ``Σ`` and ``∑``-like pairs, arrows that differ by a tick).

**Two disjoint class sets.** The kept pool is split once, by the fixed seed
``SPLIT_SEED`` (independent of the run seed), into the 100 classes of ``split_glyphs``
(the evaluation stream the book reports) and the classes of ``split_glyphs_calibration``
(the first 100 of the rest): the stream on which the training budget and the head
protocol are chosen, and that the book never reports (the two-phase protocol of
arXiv 2403.09066). Both have the same size, fonts and renderer.

**Images.** ``N_TRAIN`` training and ``N_TEST`` test images per class, 28 x 28, white on
black, in [0, 1]; rendered deterministically from ``SPLIT_SEED`` (train and test from
different generators), so every run sees the same images; the run seed sets the class
order and with it the experiences.
"""

from __future__ import annotations

import os
import unicodedata
from functools import lru_cache

import numpy as np
from matplotlib.ft2font import FT2Font
from PIL import Image, ImageFilter

from clmerge.benchmarks.stream import Stream, class_incremental_stream
from clmerge.pretrain.letters import FONT_FILES as LETTER_FONT_FILES
from clmerge.pretrain.letters import LETTERS, _cap_height, _glyph, font_dir, render_char

SPLIT_SEED = 0           # class split and rendering; independent of the run seed
N_CLASSES = 100          # classes per stream (10 experiences of 10 by default)
N_TRAIN = 60             # training images per class
N_TEST = 50              # test images per class
LOOKALIKE_THRESHOLD = 0.93  # template similarity at which two glyphs count as alike
TEMPLATE_SIZE = 28

FONT_FILES = tuple(f for f in LETTER_FONT_FILES if f.startswith("DejaVu"))  # the 12 DejaVu faces

BLOCKS = {  # name -> inclusive code-point ranges
    "greek": ((0x0391, 0x03A9), (0x03B1, 0x03C9)),
    "cyrillic": ((0x0400, 0x045F),),
    "armenian": ((0x0531, 0x0556), (0x0561, 0x0587)),
    "georgian": ((0x10D0, 0x10FA),),
    "arrows": ((0x2190, 0x21FF),),
}


@lru_cache(maxsize=1)
def glyph_fonts() -> tuple[str, ...]:
    """Paths of the :data:`FONT_FILES` present in matplotlib's bundled fonts."""
    d = font_dir()
    found = tuple(os.path.join(d, f) for f in FONT_FILES if os.path.isfile(os.path.join(d, f)))
    if not found:
        raise RuntimeError(f"no DejaVu fonts found in {d}")
    return found


def candidate_chars() -> list[str]:
    """Every code point of :data:`BLOCKS` that each glyph font maps and that is not a
    precomposed character (a base glyph plus a diacritic or an overlay, such as ``Ё`` or
    ``↚``), in code-point order."""
    fts = [FT2Font(p) for p in glyph_fonts()]
    out = []
    for ranges in BLOCKS.values():
        for lo, hi in ranges:
            for cp in range(lo, hi + 1):
                if unicodedata.decomposition(chr(cp)):
                    continue
                if all(ft.get_char_index(cp) != 0 for ft in fts):
                    out.append(chr(cp))
    return out


def _template(path: str, char: str) -> np.ndarray:
    """The unaugmented glyph, cap-height scaled as the renderer does, centred, blurred."""
    size = TEMPLATE_SIZE
    g = _glyph(path, char, 0)
    f = 16.5 / _cap_height(path)  # the middle of the renderer's cap-height range
    w, h = g.size[0] * f, g.size[1] * f
    k = min(1.0, (size - 2.0) / max(w, h))
    w, h = max(1, int(round(w * k))), max(1, int(round(h * k)))
    g = g.resize((w, h), resample=Image.BOX)
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(g, ((size - w) // 2, (size - h) // 2))
    canvas = canvas.filter(ImageFilter.GaussianBlur(1.0))
    a = np.asarray(canvas, dtype=np.float64).ravel()
    a = a - a.mean()
    return a / (np.linalg.norm(a) + 1e-12)


def similarity(chars_a: list[str], chars_b: list[str]) -> np.ndarray:
    """Mean over the glyph fonts of the template cosine similarity, ``(len(a), len(b))``."""
    fonts = glyph_fonts()
    out = np.zeros((len(chars_a), len(chars_b)))
    for path in fonts:
        ta = np.stack([_template(path, c) for c in chars_a])
        tb = np.stack([_template(path, c) for c in chars_b])
        out += ta @ tb.T
    return out / len(fonts)


@lru_cache(maxsize=1)
def class_pool() -> tuple[tuple[str, ...], dict]:
    """The kept glyphs (code-point order) and what was dropped and why."""
    cands = candidate_chars()
    to_latin = similarity(cands, list(LETTERS))
    latin_like = to_latin.max(1) >= LOOKALIKE_THRESHOLD
    rest = [c for c, d in zip(cands, latin_like) if not d]
    sim = similarity(rest, rest)
    kept_idx: list[int] = []
    dropped_pairs = []
    for i in range(len(rest)):
        clash = [j for j in kept_idx if sim[i, j] >= LOOKALIKE_THRESHOLD]
        if clash:
            dropped_pairs.append((rest[i], rest[clash[0]]))
        else:
            kept_idx.append(i)
    kept = tuple(rest[i] for i in kept_idx)
    info = {
        "candidates": len(cands),
        "dropped_latin": [(c, LETTERS[int(to_latin[k].argmax())])
                          for k, c in enumerate(cands) if latin_like[k]],
        "dropped_alike": dropped_pairs,
        "kept": len(kept),
    }
    return kept, info


@lru_cache(maxsize=1)
def class_split() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(evaluation classes, calibration classes): disjoint, ``N_CLASSES`` each."""
    pool, _ = class_pool()
    if len(pool) < 2 * N_CLASSES:
        raise RuntimeError(f"only {len(pool)} distinct glyphs; need {2 * N_CLASSES}")
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(pool))
    ev = tuple(pool[i] for i in perm[:N_CLASSES])
    cal = tuple(pool[i] for i in perm[N_CLASSES:2 * N_CLASSES])
    return ev, cal


def render_glyph_set(chars, n_per_class: int, seed: int, size: int = 28
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``n_per_class`` augmented images of each glyph, class-major; float32 in [0, 1],
    shape ``(len(chars) * n_per_class, 1, size, size)``, and int64 labels."""
    rng = np.random.default_rng(seed)
    fonts = glyph_fonts()
    y = np.repeat(np.arange(len(chars), dtype=np.int64), n_per_class)
    x = np.zeros((len(y), 1, size, size), dtype=np.uint8)
    for i, label in enumerate(y):
        x[i, 0] = render_char(rng, fonts, chars[int(label)], size)
    return (x / 255.0).astype(np.float32), y


@lru_cache(maxsize=2)
def _arrays(which: str):
    ev, cal = class_split()
    chars = ev if which == "evaluation" else cal
    offset = 0 if which == "evaluation" else 1000  # calibration images: other generators
    xtr, ytr = render_glyph_set(chars, N_TRAIN, SPLIT_SEED + offset + 1)
    xte, yte = render_glyph_set(chars, N_TEST, SPLIT_SEED + offset + 2)
    return chars, xtr, ytr, xte, yte


def _stream(name: str, which: str, n_experiences: int, seed: int) -> Stream:
    chars, xtr, ytr, xte, yte = _arrays(which)
    return class_incremental_stream(name, xtr, ytr, xte, yte, n_experiences=n_experiences,
                                    seed=seed, is_image=True,
                                    info={"classes": "".join(chars)})


def split_glyphs(n_experiences: int = 10, seed: int = 0) -> Stream:
    """Rendered Greek/Cyrillic/Armenian/Georgian/arrow glyphs unlike Latin letters: 100 classes, 60 train / 50 test each."""
    return _stream("split_glyphs", "evaluation", n_experiences, seed)


def split_glyphs_calibration(n_experiences: int = 10, seed: int = 0) -> Stream:
    """Calibration stream (never reported): 100 other glyph classes, same renderer and sizes as split_glyphs."""
    return _stream("split_glyphs_calibration", "calibration", n_experiences, seed)
