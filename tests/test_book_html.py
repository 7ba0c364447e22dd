"""Checks over the built HTML book, as a reader meets it.

Runs when ``CLMERGE_BOOK_HTML`` names a built book (``_build/html``); CI builds the smoke
book and runs this file on it (``.ci/run``). Without the variable every test is skipped:
a stale local build must not decide a test run.

- every chapter of ``_toc.yml`` is linked from the index page's text;
- every figure in a page's outputs has a numbered caption;
- no page shows a traceback, an error output or a stderr stream;
- a cell's printed lines are one output block, not one block per line;
- every internal link resolves to a file of the build, and its #fragment to an id there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

bs4 = pytest.importorskip("bs4")

ROOT = Path(__file__).resolve().parent.parent
HTML = Path(os.environ["CLMERGE_BOOK_HTML"]) if os.environ.get("CLMERGE_BOOK_HTML") else None

pytestmark = pytest.mark.skipif(HTML is None, reason="set CLMERGE_BOOK_HTML to a built book")


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [c["file"] for part in toc["parts"] for c in part["chapters"]]


def pages() -> list[Path]:
    return sorted(p for p in HTML.rglob("*.html")
                  if not any(part.startswith("_") for part in p.relative_to(HTML).parts)
                  and p.name not in ("genindex.html", "search.html"))


def soup(path: Path):
    return bs4.BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def article(page):
    return page.select_one("article") or page.select_one("main") or page


def test_the_build_holds_every_page_of_the_toc():
    assert HTML.is_dir(), f"no book at {HTML}"
    missing = [f for f in toc_files() if not (HTML / f"{f}.html").exists()]
    assert not missing, f"pages not built: {missing}"


def test_every_chapter_is_linked_from_the_index():
    index = article(soup(HTML / "index.html"))
    linked = {urlsplit(a["href"]).path.removesuffix(".html") for a in index.select("a[href]")}
    missing = [f for f in toc_files() if f not in linked]
    assert not missing, f"the index does not link {missing}"


def _figures(page):
    """Every image a cell output shows: (image, its enclosing <figure> or None)."""
    for img in page.select(".cell_output img, .output img"):
        yield img, img.find_parent("figure")


@pytest.mark.parametrize("name", [str(p.relative_to(HTML)) for p in pages()] if HTML else [])
def test_every_figure_has_a_numbered_caption(name):
    page = soup(HTML / name)
    bad = []
    for img, figure in _figures(page):
        caption = figure.find("figcaption") if figure else None
        text = caption.get_text(" ", strip=True) if caption else ""
        if not re.match(r"Fig\. ?\d+", text) or len(text) < 20:
            bad.append(img.get("src", "?"))
    assert not bad, f"{name}: figures without a numbered caption: {bad}"


TRACEBACK = re.compile(r"Traceback \(most recent call last\)|\w+Error: .*\n.*File \"")


@pytest.mark.parametrize("name", [str(p.relative_to(HTML)) for p in pages()] if HTML else [])
def test_no_page_shows_a_traceback_or_stderr(name):
    page = article(soup(HTML / name))
    blocks = page.select(".output.stderr, .output.traceback, .output.error, .stderr")
    assert not blocks, f"{name}: {len(blocks)} stderr/traceback output(s), first: " \
                       f"{blocks[0].get_text()[:200]!r}"
    assert not TRACEBACK.search(page.get_text()), f"{name}: a traceback in the text"
    # a Markdown table a cell displayed must render as a table, not as its source text
    assert not re.search(r"\|\s*-{3,}\s*\||\|\s*\u2014+\s*\|", page.get_text()), \
        f"{name}: a Markdown table shown as text"


@pytest.mark.parametrize("name", [str(p.relative_to(HTML)) for p in pages()] if HTML else [])
def test_a_cell_prints_into_one_block(name):
    page = article(soup(HTML / name))
    split = [out for out in page.select(".cell_output")
             if len(out.find_all("div", class_="stream", recursive=False)) > 1]
    assert not split, f"{name}: {len(split)} cell(s) with their printed lines in separate blocks"


def _ids(path: Path, cache={}) -> set[str]:
    if path not in cache:
        cache[path] = {el["id"] for el in soup(path).select("[id]")}
    return cache[path]


@pytest.mark.parametrize("name", [str(p.relative_to(HTML)) for p in pages()] if HTML else [])
def test_every_internal_link_resolves(name):
    path = HTML / name
    page = soup(path)
    broken = []
    for a in page.select("a[href]"):
        href = a["href"]
        parts = urlsplit(href)
        if parts.scheme or parts.netloc or href.startswith(("mailto:", "javascript:")):
            continue
        target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            broken.append(href)
        elif parts.fragment and target.suffix == ".html" and \
                unquote(parts.fragment) not in _ids(target):
            broken.append(href)
    assert not broken, f"{name}: links that do not resolve: {sorted(set(broken))}"
