"""Pages of the book checked from their sources: references.bib (every entry links its
source, lists every author, keeps its capitals; every citation has an entry) and the
methods page (a section for every registered method)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIB = (ROOT / "references.bib").read_text()
ENTRIES = dict(re.findall(r"@\w+\{(\w+),(.*?)\n\}", BIB, re.S))


def field(body: str, name: str) -> str | None:
    m = re.search(rf"^\s*{name}\s*=\s*\{{(.*)\}},?\s*$", body, re.M)
    return m[1] if m else None


def test_the_bibliography_parses_into_entries():
    assert len(ENTRIES) >= 10 and BIB.count("@") == len(ENTRIES)


@pytest.mark.parametrize("key", sorted(ENTRIES))
def test_entry_links_its_source_and_names_every_author(key):
    body = ENTRIES[key]
    url, doi, eprint = field(body, "url"), field(body, "doi"), field(body, "eprint")
    assert (url and url.startswith("https://")) or doi, f"{key}: no url or doi"
    if eprint:
        assert url == f"https://arxiv.org/abs/{eprint}", f"{key}: url is not the arXiv page"
    assert "others" not in field(body, "author"), f"{key}: truncated author list"


# words that a bibliography style would lower-case unless braced
CAPITALS = ["LoRA", "MagMax", "InfLoRA", "MobileNetV2", "TIES", "Avalanche", "Transformers",
            "Super Mario"]


@pytest.mark.parametrize("word", CAPITALS)
def test_capitals_are_protected(word):
    titles = [field(b, "title") for b in ENTRIES.values()]
    for title in titles:
        bare = re.sub(r"\{[^{}]*\}", "", title)
        assert word not in bare, f"{word!r} not braced in {title!r}"


def test_every_citation_in_the_pages_has_an_entry():
    keys = set()
    for page in [ROOT / "index.md", *ROOT.glob("chapters/*.md"), *ROOT.glob("chapters/*.ipynb")]:
        keys |= set(re.findall(r"\{cite:[pt]\}`([^`]+)`", page.read_text()))
    keys = {k.strip() for ks in keys for k in ks.split(",")}
    assert keys and keys <= set(ENTRIES), f"no entry for {keys - set(ENTRIES)}"


def test_the_methods_page_has_a_section_for_every_method():
    from clmerge.report.methods import method_names, method_section

    page = (ROOT / "chapters" / "methods.md").read_text()
    sections = re.findall(r'^## .*\(`(\w+)`\)\n\n```\{code-cell\}[^\n]*\n:tags: \[remove-input\]\n\n'
                          r'Markdown\(method_section\("(\w+)", seen\)\)', page, re.M)
    assert [a for a, b in sections if a != b] == []
    assert sorted(a for a, _ in sections) == sorted(method_names())
    for name in method_names():
        text = method_section(name)
        assert text and "arXiv" in text or name in ("seq", "joint", "probe", "average")
