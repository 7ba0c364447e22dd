"""Checks over the built HTML book, as a reader meets it.

Runs when ``CLMERGE_BOOK_HTML`` names a built book (``_build/html``); CI builds the smoke
book and runs this file on it (``.ci/run``). Without the variable every test is skipped:
a stale local build must not decide a test run.

- every chapter of ``_toc.yml`` is linked from the index page's text;
- every figure in a page's outputs has a numbered caption;
- no page shows a traceback, an error output or a stderr stream;
- a cell's printed lines are one output block, not one block per line;
- every internal link resolves to a file of the build, and its #fragment to an id there;

and, with every page open in headless Chromium at 1280 px (``tests/chromium.py``; set
``CLMERGE_BOOK_SHOTS`` to a folder to keep a full-page screenshot of each):

- no element is wider than the text column, and none scrolls part of itself out of view;
- no variant label as code spells it (``pm[eps=0.3]``, ``magmax@ft``) outside code, no
  table header with an underscore, no table cell showing NaN;
- no two figure captions of the book are the same;
- every script is served with the book, and the math is typeset (no TeX source shown);
- the index's brief starts on the first screen and has at most 250 words.
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


NUMBER = re.compile(r"[+-]?\d+\.\d+")


def _text(page) -> str:
    return re.sub(r"\s+", " ", article(page).get_text(" ")).replace("\u2212", "-")


def test_every_number_of_the_brief_is_on_the_page_it_links():
    """The brief states the quick profile's numbers; each bullet's decimals must appear,
    computed, on the page that bullet links (checked when the chapters ran that profile)."""
    executed = re.search(r"Executed with clmerge \S+ profile (\w+)",
                         _text(soup(HTML / "chapters" / "01_setting.html")))
    if executed is None or executed.group(1) != "quick":
        pytest.skip("the brief states the quick profile's numbers; this build ran "
                    f"{executed.group(1) if executed else 'an unknown profile'}")
    bullets = article(soup(HTML / "index.html")).select("#in-brief li")
    assert bullets, "the index has no bulleted 'In brief' section"
    missing = []
    for li in bullets:
        link = li.select_one("a[href]")
        assert link is not None, f"a bullet of the brief links no page: {li.get_text()[:60]!r}"
        page = _text(soup(HTML / urlsplit(link["href"]).path))
        for number in NUMBER.findall(li.get_text(" ").replace("\u2212", "-")):
            if not re.search(r"(?<![\d.])" + re.escape(number) + r"(?![\d])", page):
                missing.append(f"{number} ({link['href']})")
    assert not missing, f"numbers of the brief not on the page it links: {missing}"


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


# ---------------------------------------------------------------- in a browser, at 1280 px
# Every page is opened once in headless Chromium (tests/chromium.py) at 1280 x 800, after
# MathJax has typeset it, and measured by PAGE_REPORT below. Without Chromium the checks
# skip, except in CI (CI=true), where they fail: CI installs it (`make env`).

PAGE_REPORT = r"""
(() => {
  const art = document.querySelector('article') || document.querySelector('main')
              || document.body;
  const box = art.getBoundingClientRect();
  const visible = el => !!(el.offsetParent || el.getClientRects().length);
  const name = el => el.tagName.toLowerCase() + (el.className && el.className.baseVal === undefined
                     ? '.' + String(el.className).trim().split(/\s+/).join('.') : '')
                     + ': ' + (el.innerText || el.alt || el.src || '').trim().slice(0, 60);
  const wide = [];
  for (const el of art.querySelectorAll(
      'table, img, figure, pre, div.highlight, .math, .cell_output > *, .output, p, li, h1, h2, h3')) {
    if (!visible(el)) continue;
    const r = el.getBoundingClientRect();
    if (r.width === 0) continue;
    const past = Math.round(r.right - box.right);
    const clipped = el.scrollWidth - el.clientWidth;
    if (past > 1) wide.push(`${name(el)} (${past} px past the column)`);
    else if (clipped > 2 && getComputedStyle(el).overflowX !== 'visible')
      wide.push(`${name(el)} (${clipped} px scrolled out of view)`);
  }
  // text a reader sees: not code (blocks or inline), not scripts
  const texts = [];
  const walker = document.createTreeWalker(art, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const p = n.parentElement;
    if (!p || !visible(p) || p.closest('pre, script, style, .MathJax_Preview')) continue;
    if (p.closest('code')) continue;   // code is syntax to type: labels belong there
    texts.push(n.textContent);
  }
  const text = texts.join(' ');
  // a table cell that shows a missing number as NaN (an empty cell with a footnote is right)
  const nan = [...art.querySelectorAll('td')].filter(visible).map(td => td.innerText.trim())
              .filter(t => /^(nan|NaN)(\s*±.*)?$|±\s*(nan|NaN)$/.test(t));
  // header text outside code (an environment variable in code is not a column name)
  const header = [...art.querySelectorAll('th')].filter(visible).map(th => {
    const copy = th.cloneNode(true);
    copy.querySelectorAll('code').forEach(c => c.remove());
    return copy.textContent.trim();
  }).filter(t => t);
  const captions = [...art.querySelectorAll('figcaption')].filter(visible)
                  .map(c => c.innerText.replace(/\s+/g, ' ').trim());
  const mathNodes = art.querySelectorAll('.math').length;
  const typeset = art.querySelectorAll('.MathJax_CHTML, .mjx-chtml, mjx-container, .MathJax').length;
  const scripts = [...document.scripts].map(s => s.src).filter(s => s && !s.startsWith('file:'));
  const brief = art.querySelector('#in-brief li');
  const briefText = art.querySelector('#in-brief') ? art.querySelector('#in-brief').innerText : '';
  return {wide, text, nan, header, captions, mathNodes, typeset, scripts,
          briefTop: brief ? brief.getBoundingClientRect().top + window.scrollY : null,
          briefWords: briefText.split(/\s+/).filter(w => w).length,
          viewport: window.innerHeight};
})()
"""


@pytest.fixture(scope="module")
def reports():
    """{page: PAGE_REPORT's answer} for every page; screenshots into CLMERGE_BOOK_SHOTS
    when that names a folder."""
    import chromium

    if chromium.executable() is None:
        message = "no chromium on PATH: `make env` installs it (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    shots = os.environ.get("CLMERGE_BOOK_SHOTS")
    out = {}
    with chromium.Browser(width=1280, height=800) as browser:
        for path in pages():
            name = str(path.relative_to(HTML))
            browser.open(path.as_uri())
            browser.evaluate(chromium.MATH_READY)
            out[name] = browser.evaluate(PAGE_REPORT)
            if shots:
                Path(shots).mkdir(parents=True, exist_ok=True)
                browser.screenshot(Path(shots) / (name.removesuffix(".html")
                                                  .replace("/", "__") + ".png"))
    return out


PAGE_NAMES = [str(p.relative_to(HTML)) for p in pages()] if HTML else []
RAW_LABEL = re.compile(r"\b[a-z][a-z0-9_]*(?:@ft)?\[[^\]\s=]+=[^\]]*\]|\b[a-z][a-z0-9_]*@ft\b")


@pytest.mark.parametrize("name", PAGE_NAMES)
def test_nothing_is_wider_than_its_column(reports, name):
    wide = reports[name]["wide"]
    assert not wide, f"{name}: wider than the text column at 1280 px: {wide[:5]}"


@pytest.mark.parametrize("name", PAGE_NAMES)
def test_no_raw_variant_label_nor_nan_is_shown(reports, name):
    text = reports[name]["text"]
    labels = sorted(set(m.group(0) for m in RAW_LABEL.finditer(text)))
    assert not labels, f"{name}: variant labels as code spells them: {labels[:8]}"
    nan = reports[name]["nan"]
    assert not nan, f"{name}: table cells showing NaN: {nan[:3]}"


@pytest.mark.parametrize("name", PAGE_NAMES)
def test_no_column_name_has_an_underscore(reports, name):
    bad = sorted({h for h in reports[name]["header"] if re.search(r"\w_\w", h)})
    assert not bad, f"{name}: table headers as code spells them: {bad[:8]}"


@pytest.mark.parametrize("name", PAGE_NAMES)
def test_math_is_typeset_by_a_local_mathjax(reports, name):
    report = reports[name]
    assert not report["scripts"], f"{name}: scripts loaded from the network: {report['scripts']}"
    if report["mathNodes"]:
        assert report["typeset"], f"{name}: {report['mathNodes']} math element(s), none typeset"
        tex = re.findall(r".{0,30}\\[(\[].{0,30}", report["text"])
        assert not tex, f"{name}: TeX source shown: {tex[:3]}"


def test_no_two_captions_are_alike(reports):
    seen: dict[str, str] = {}
    same = []
    for name, report in reports.items():
        for caption in report["captions"]:
            body = re.sub(r"^Fig\. ?\d+\.?\s*", "", caption)
            if body in seen:
                same.append(f"{seen[body]} and {name}: {body[:80]!r}")
            seen.setdefault(body, name)
    assert not same, f"identical captions: {same[:5]}"


def test_the_first_bullet_of_the_brief_is_on_the_first_screen(reports):
    report = reports["index.html"]
    assert report["briefTop"] is not None, "the index has no bulleted 'In brief' section"
    assert report["briefTop"] < report["viewport"], \
        f"the brief's first bullet starts at {report['briefTop']:.0f} px, below the first " \
        f"screen ({report['viewport']} px)"


def test_the_brief_is_short(reports):
    words = reports["index.html"]["briefWords"]
    assert words <= 250, f"the index's 'In brief' has {words} words (at most 250)"
