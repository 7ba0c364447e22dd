"""`clmerge book`: chapter parameters, their checks, the version digest, the staged notebooks.

Nothing here executes a notebook (papermill runs with prepare_only), so it is fast.
"""

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from jupyter_cache.cache.main import JupyterCacheBase

import clmerge
from clmerge import book, cli
from clmerge.experiment.config import ConfigError


def _injected(nb):
    cells = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    return cells[0].source


def _cache_key(path):
    _, key = JupyterCacheBase.create_hashed_notebook(None, nbformat.read(str(path), 4))
    return key


# ---------------------------------------------------------------- -p KEY=VALUE


def test_parameter_values_are_yaml():
    assert book.parse_parameters(["seeds=[0, 1]"]) == {"seeds": [0, 1]}
    assert book.parse_parameters(["force=True", "eps=0.3", "benchmark=None",
                                  'variants=["pm[eps=0.3]", seq]', "x=a=b"]) == {
        "force": True, "eps": 0.3, "benchmark": None, "variants": ["pm[eps=0.3]", "seq"],
        "x": "a=b"}
    args = cli.build_parser().parse_args(["book", "--chapters", "04_comparison",
                                          "-p", "seeds=[0, 1]", "-p", "profile=smoke"])
    assert args.chapters == ["04_comparison"]
    assert book.parse_parameters(args.parameters) == {"seeds": [0, 1], "profile": "smoke"}
    for bad in ("seeds", "=3", "seeds=[0, 1"):
        with pytest.raises(ConfigError):
            book.parse_parameters([bad])


def test_unknown_parameter_names_the_chapter_and_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        book.check_parameters(["01_setting"], {"paper_tasks": 5})
    msg = str(e.value)
    assert "01_setting" in msg and "'paper_tasks'" in msg
    for name in book.chapter_parameters(book.CHAPTERS / "01_setting.ipynb"):
        # what -p can set is listed; what the book sets itself is not
        listed = msg.split("valid parameters:")[1].split("(")[0].replace(",", " ").split()
        assert (name in listed) is (name not in book.RESERVED)
    assert "--results-dir" in msg
    # a parameter of 04: fine there, and alone
    assert book.check_parameters(["04_comparison"], {"paper_tasks": 5}) == {
        "04_comparison": {"paper_tasks": 5}}
    with pytest.raises(ConfigError, match="--profile"):
        book.check_parameters(["04_comparison"], {"profile": "smoke"})
    for reserved in ("clmerge_version", "data_version"):
        with pytest.raises(ConfigError, match=reserved):
            book.check_parameters(["04_comparison"], {reserved: "x"})
    with pytest.raises(ConfigError, match="unknown chapter"):
        book.check_parameters(["04_comparisn"], {})


def test_without_chapters_a_parameter_goes_where_it_is_declared():
    sent = book.check_parameters(None, {"paper_tasks": 5, "seeds": [0, 1]})
    assert sent["04_comparison"] == {"paper_tasks": 5, "seeds": [0, 1]}
    assert sent["01_setting"] == {"seeds": [0, 1]}
    with pytest.raises(ConfigError, match=r"no chapter has a parameter 'sedes'; valid .*seeds"):
        book.check_parameters(None, {"sedes": [0]})


@pytest.mark.parametrize("html", [True, False])
def test_unknown_parameter_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys, html):
    monkeypatch.setattr(book, "BUILD", tmp_path / "_build")
    results = tmp_path / "results"
    argv = ["book", "--profile", "smoke", "--results-dir", str(results),
            "--chapters", "04_comparison", "-p", "seeds=[0, 1]", "-p", "sedes=[0]"]
    assert cli.main(argv + ([] if html else ["--no-html"])) == 2
    err = capsys.readouterr().err
    assert "04_comparison" in err and "'sedes'" in err and "seeds" in err and "paper_tasks" in err
    assert list(tmp_path.iterdir()) == []


def test_chapter_parameters_read_multiline_defaults():
    params = book.chapter_parameters(book.CHAPTERS / "03_trajectory_regularized_merging.ipynb")
    assert params["trm_ablations"]["default"].startswith('["trm[steps=0]", "trm[pc=0.0]"')
    assert params["seeds"] == {"default": "None", "help": "None: the profile's seeds"}
    assert "**`03_trajectory_regularized_merging`**" in book.parameters_markdown()


HIDDEN = {"hide-input", "remove-input", "hide-cell", "remove-cell"}


def test_every_cell_of_every_chapter_has_a_unique_id():
    """nbformat 4.5 cells carry ids; one without makes nbformat warn on stderr wherever a
    chapter is read (the rerun page's parameter tables among them)."""
    for path in book.chapter_paths():
        raw = json.loads(path.read_text(encoding="utf-8"))
        ids = [c.get("id") for c in raw["cells"]]
        assert None not in ids, f"{path.name}: cell {ids.index(None)} has no id"
        assert len(set(ids)) == len(ids), f"{path.name}: repeated cell ids"


def test_every_chapter_opens_with_text_and_hides_its_code():
    """A chapter opens with its text (question and answer), then its parameters cell
    (collapsed); every other code cell is hidden, and the last one names the version."""
    for path in book.chapter_paths():
        assert {"clmerge_version", "data_version"} <= set(book.chapter_parameters(path)), \
            path.name
        nb = nbformat.read(str(path), 4)
        assert nb.cells[0].cell_type == "markdown", path.name
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), path.name
        shown = [c.source[:40] for c in code[1:] if not HIDDEN & set(c.metadata.get("tags", []))]
        assert not shown, f"{path.name}: code cells shown: {shown}"
        assert "clmerge.__version__" in code[-1].source, path.name
        assert not any(c.outputs for c in code), f"{path.name} is committed with outputs"


# ---------------------------------------------------------------- version


def test_version_is_a_digest_of_the_code(tmp_path):
    assert re.fullmatch(r"0\.1\.0\+src\.[0-9a-f]{10}", clmerge.__version__)
    assert clmerge.__version__.endswith(clmerge.source_digest())

    pkg = tmp_path / "clmerge"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "profiles").mkdir()
    (pkg / "__init__.py").write_text("x = 1\n")
    (pkg / "sub" / "mod.py").write_text("y = 2\n")
    (pkg / "profiles" / "quick.yaml").write_text("epochs: 1\n")
    seen = {clmerge.source_digest(pkg)}

    def changed():
        d = clmerge.source_digest(pkg)
        new = d not in seen
        seen.add(d)
        return new

    assert not changed()                                   # deterministic
    (pkg / "README.md").write_text("not code")
    (pkg / "sub" / "data.json").write_text("{}")
    assert not changed()                                   # only .py and profiles/*.yaml
    (pkg / "sub" / "mod.py").write_text("y = 3\n")
    assert changed()                                       # an edit
    (pkg / "profiles" / "quick.yaml").write_text("epochs: 2\n")
    assert changed()                                       # a profile
    (pkg / "sub" / "new.py").write_text("")
    assert changed()                                       # a new file
    (pkg / "sub" / "new.py").rename(pkg / "sub" / "renamed.py")
    assert changed()                                       # a rename


# ---------------------------------------------------------------- staged notebooks


def test_staged_chapters_carry_the_injected_parameters(tmp_path, monkeypatch):
    results = tmp_path / "results"
    written = book.prepare_chapters(tmp_path / "a", "smoke", results_dir=str(results),
                                    only=["04_comparison"], params={"seeds": [0, 1]})
    assert [p.name for p in written] == [p.name for p in book.chapter_paths()]
    for path in written:
        nb = nbformat.read(str(path), 4)
        src = _injected(nb)
        assert 'profile = "smoke"' in src
        assert f'clmerge_version = "{clmerge.__version__}"' in src
        assert f'data_version = "{book.data_version()}"' in src
        assert f'results_dir = "{results.resolve()}"' in src
        assert ("seeds = [0, 1]" in src) == (path.stem == "04_comparison")
        # the injected cell follows the parameters cell; nothing else is added (the page's
        # download runs anywhere: no hidden cell moves the kernel)
        tags = [c.metadata.get("tags", []) for c in nb.cells]
        injected = next(i for i, t in enumerate(tags) if "injected-parameters" in t)
        assert "parameters" in tags[injected - 1]
        assert "remove-cell" in tags[injected]      # the page shows the chapter's own cell
        assert len(nb.cells) == len(nbformat.read(str(book.CHAPTERS / path.name), 4).cells) + 1
        assert "chdir" not in "".join(c.source for c in nb.cells)
        assert not any(c.get("outputs") for c in nb.cells)   # nothing executed
    assert not results.exists()

    # the cache key (code cells' source) is stable, and moves with the version
    again = book.prepare_chapters(tmp_path / "b", "smoke", results_dir=str(results),
                                  only=["04_comparison"], params={"seeds": [0, 1]})
    assert [_cache_key(p) for p in written] == [_cache_key(p) for p in again]
    monkeypatch.setattr(clmerge, "__version__", "0.1.0+src.0000000000")
    moved = book.prepare_chapters(tmp_path / "c", "smoke", results_dir=str(results),
                                  only=["04_comparison"], params={"seeds": [0, 1]})
    assert all(_cache_key(p) != _cache_key(q) for p, q in zip(written, moved))


@pytest.mark.parametrize("only", [["04_comparison"], None])
def test_force_reaches_the_chapters_named_only(tmp_path, only):
    """``clmerge book --chapters 04_comparison --force`` recomputes chapter 4's results; the
    other chapters keep their cached execution (their key: force = False)."""
    written = book.prepare_chapters(tmp_path, "smoke", force=True, only=only)
    for path in written:
        src = _injected(nbformat.read(str(path), 4))
        forced = only is None or path.stem in only
        assert ("force = True" in src) == forced and ("force = False" in src) != forced


def test_stage_source_serves_mathjax_or_falls_back_to_its_cdn(tmp_path, monkeypatch, capsys):
    import yaml

    fake = tmp_path / "mathjax"
    for part in book.MATHJAX_PARTS:
        target = fake / part
        if part.endswith(".js"):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("// js")
        else:
            target.mkdir(parents=True, exist_ok=True)
            (target / "x.js").write_text("// js")
    monkeypatch.setattr(book, "MATHJAX", fake)
    src = book.stage_source(tmp_path / "with")
    config = yaml.safe_load((src / "_config.yml").read_text())["sphinx"]["config"]
    # Sphinx resolves mathjax_path under _static/; html_extra_path lands at the book's root
    (extra,) = config["html_extra_path"]
    assert ((src / extra) / Path(config["mathjax_path"]).relative_to("..")).is_file()
    assert (src / extra / "mathjax" / "jax" / "output" / "CommonHTML" / "x.js").is_file()
    assert not (src / "_static" / "mathjax").exists()   # jupyter-book would load every file

    monkeypatch.setattr(book, "MATHJAX", tmp_path / "absent")
    src = book.stage_source(tmp_path / "without")
    config = yaml.safe_load((src / "_config.yml").read_text())["sphinx"]["config"]
    assert "mathjax_path" not in config and "html_extra_path" not in config
    assert not (src / "_mathjax").exists()
    assert "no MathJax" in capsys.readouterr().out


def test_stage_source_copies_pages_not_chapters(tmp_path):
    src = book.stage_source(tmp_path / "src")
    assert (src / "_config.yml").exists() and (src / "_toc.yml").exists()
    assert (src / "_static" / "tables.css").exists()
    assert (src / "chapters" / "rerun.md").exists()
    assert (src / "chapters" / "appendix_execution.md").exists()
    assert not list((src / "chapters").glob("*.ipynb"))
    shutil.rmtree(src)


def test_the_data_version_changes_with_any_file_of_the_data_folder(tmp_path, monkeypatch):
    """A committed result added, or one byte of a table changed, gives another digest
    (so the cached chapters run again); the same files give the same digest."""
    data = tmp_path / "data"
    (data / "results").mkdir(parents=True)
    (data / "claims.csv").write_text("id,claim\nP1,x\n")
    monkeypatch.setenv("CLMERGE_HOME", str(tmp_path))
    first = book.data_version()
    assert first.startswith("data.") and len(first) == len("data.") + 12
    assert book.data_version(data) == first
    (data / "results" / "seq-s0.json").write_text("{}")
    added = book.data_version()
    (data / "claims.csv").write_text("id,claim\nP1,y\n")
    edited = book.data_version()
    assert len({first, added, edited}) == 3
    (data / "claims.csv").write_text("id,claim\nP1,x\n")
    (data / "results" / "seq-s0.json").unlink()
    assert book.data_version() == first
    # a file moved to another name is another folder
    (data / "claims.csv").rename(data / "claims2.csv")
    assert book.data_version() != first
    assert book.data_version(tmp_path / "nothing") == "data.none"
    assert book.base_parameters("smoke")["data_version"] == book.data_version()
