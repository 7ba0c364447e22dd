"""Filling the execution cache several chapters at a time (clmerge.book_cache).

The oracle is myst-nb's own lookup: a notebook the prefill stored must be found by
``match_cache_notebook`` on the unexecuted file, which is what the build calls. Each test
starts a few plain Python kernels on tiny notebooks (about a second each).
"""

from pathlib import Path

import nbformat
import pytest
from jupyter_cache import get_cache

from clmerge import book, book_cache, cli


def _notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def _text(nb) -> str:
    return "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                   for c in nb.cells for o in c.get("outputs", []))


def _cached(cache, path: Path):
    """The cached executed notebook the build would take for ``path``, or None."""
    try:
        record = cache.match_cache_notebook(nbformat.read(str(path), as_version=4))
    except KeyError:
        return None
    return record, cache.get_cache_bundle(record.pk).nb


def test_prefill_stores_each_chapter_where_the_build_looks_it_up(tmp_path):
    pages = tmp_path / "src" / "chapters"
    a = _notebook(pages / "a.ipynb", "import os\nprint(os.getcwd())")
    b = _notebook(pages / "b.ipynb", "x = 6 * 7", "print(x)")
    cache_dir = tmp_path / "cache"
    lines = []
    done = book_cache.prefill([a, b], cache_dir, timeout=60, jobs=2,
                              say=lambda *m, **k: lines.append(" ".join(map(str, m))))
    assert set(done) == {"a", "b"} and all(t is not None and t > 0 for t in done.values())
    cache = get_cache(str(cache_dir))
    rec_a, nb_a = _cached(cache, a)
    rec_b, nb_b = _cached(cache, b)
    # run in the chapter's own folder (run_in_temp: false), outputs kept, run time recorded
    assert _text(nb_a).strip() == str(pages)
    assert _text(nb_b).strip() == "42"
    assert rec_a.data["execution_seconds"] == pytest.approx(done["a"])
    assert any("2 kernels" in line for line in lines)
    # a second prefill finds both cached and executes nothing
    assert book_cache.prefill([a, b], cache_dir, timeout=60, jobs=2, say=lambda *m, **k: 0) == {}


def test_a_chapter_that_stops_is_left_to_the_build(tmp_path):
    good = _notebook(tmp_path / "good.ipynb", "print('fine')")
    bad = _notebook(tmp_path / "bad.ipynb", "raise ValueError('no results')")
    lines = []
    done = book_cache.prefill([good, bad], tmp_path / "cache", timeout=60, jobs=2,
                              say=lambda *m, **k: lines.append(" ".join(map(str, m))))
    assert done["bad"] is None and done["good"] is not None
    cache = get_cache(str(tmp_path / "cache"))
    assert _cached(cache, bad) is None and _cached(cache, good) is not None
    assert any("bad" in line and "runs it again" in line for line in lines)


def test_one_job_leaves_every_chapter_to_the_build(tmp_path):
    nb = _notebook(tmp_path / "a.ipynb", "print(1)")
    assert book_cache.prefill([nb], tmp_path / "cache", jobs=1) == {}
    assert not (tmp_path / "cache").exists()


def test_the_book_config_is_read_as_the_build_reads_it():
    settings = book_cache.execute_settings(book.ROOT / "_config.yml")
    assert settings == {"mode": "cache", "cache": "_build/.jupyter_cache", "timeout": -1,
                        "allow_errors": False}
    assert 1 <= book_cache.default_jobs() <= 4


@pytest.mark.parametrize("jobs", ["0", "-2"])
def test_jobs_below_one_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys, jobs):
    monkeypatch.setattr(book, "BUILD", tmp_path / "_build")
    assert cli.main(["book", "--profile", "smoke", "--jobs", jobs]) == 2
    assert "--jobs" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
