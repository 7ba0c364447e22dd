"""``clmerge book``: parameterize every chapter, then build the HTML (executing with a cache).

1. The book source (``_config.yml``, ``_toc.yml``, pages, bibliography) is staged in
   ``_build/book_src``. Each ``chapters/*.ipynb`` goes there through papermill with
   ``prepare_only=True``: ``profile``, ``clmerge_version``, ``data_version`` (and
   ``results_dir``/``force``,
   and any ``-p KEY=VALUE`` for the selected chapters) are injected after its
   ``parameters`` cell, nothing is executed. The staged notebook is exactly what a reader
   downloads from the page: it runs from any folder, because chapters name no relative
   paths (every default folder is resolved inside the clmerge package).
2. The staged chapters the cache does not hold yet are executed ``--jobs`` kernels at a
   time into that cache (:mod:`clmerge.book_cache`), as the build would execute them.
3. ``jupyter-book build`` renders the staged source to ``_build/html`` with warnings as
   errors and executes each chapter still missing itself, in a fresh kernel, through the jupyter-cache
   at ``execute.cache`` of ``_config.yml`` (``_build/.jupyter_cache``). The cache key is
   the code cells' source, which includes the injected parameters and
   ``clmerge_version`` (``clmerge.__version__``, a digest of the package's code) and
   ``data_version`` (:func:`data_version`, a digest of the data folder: the committed
   results, claims and calibration tables the chapters read): a chapter runs again when
   its code, its parameters, clmerge or the committed data change, and comes from the
   cache otherwise.

``--no-html`` executes the selected chapters with papermill into
``_build/executed/<profile>/`` instead (no cache, no HTML): the fast check that every
chapter runs. Chapters read and write only result files, so they run in any order.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import math
import os
import shutil
import subprocess
import sys
import time
import tokenize
from pathlib import Path

import clmerge
from clmerge import book_cache
from clmerge.benchmarks.registry import BENCHMARKS
from clmerge.errors import ConfigError
from clmerge.experiment.config import load_yaml_text, short
from clmerge.experiment.variants import variant_config
from clmerge.paths import data_dir, project_dir

# papermill and nbformat come with the optional ``book`` extra (pyproject.toml): they are
# imported inside the functions that need them, so `clmerge run` works without them

ROOT = project_dir()  # the book's sources, settings and results (clmerge.paths)
BUILD = ROOT / "_build"
CHAPTERS = ROOT / "chapters"
BOOK_FILES = ["_config.yml", "_toc.yml", "references.bib"]
PAGE_SUFFIXES = (".md", ".png", ".svg")
# MathJax 2 as Debian's libjs-mathjax installs it (`make env` installs the package), and the
# part of it the book's pages load (TeX in, CommonHTML out with its TeX web fonts), staged
# in _mathjax/mathjax, which `html_extra_path` copies to the built book's mathjax/ (not into
# _static: jupyter-book adds every *.js there to every page), so that the built book
# typesets its math offline.
MATHJAX = Path("/usr/share/javascript/mathjax")
MATHJAX_PARTS = ["MathJax.js", "config/TeX-AMS_CHTML.js", "extensions", "jax/input/TeX",
                 "jax/output/CommonHTML", "jax/element", "localization/en",
                 "fonts/HTML-CSS/TeX/woff"]
# Parameters `clmerge book` sets itself, and why a -p cannot: the option to use instead,
# or what the value is.
RESERVED = {"profile": "use --profile", "results_dir": "use --results-dir",
            "force": "use --force", "clmerge_version": "it is the code's version",
            "data_version": "it is the data folder's digest"}


class ChapterError(ConfigError):
    """A chapter stopped with an error: one sentence with the chapter, the cell and the
    error's own message (the executed notebook keeps the details)."""

    def __init__(self, stem: str, error, notebook: Path):
        self.user_error = error.ename == "ConfigError"
        super().__init__(f"chapter {stem} stopped in cell {error.exec_count}: "
                         f"{error.ename}: {error.evalue} (executed notebook: {notebook})")


def chapter_paths(only: list[str] | None = None) -> list[Path]:
    paths = sorted(CHAPTERS.glob("*.ipynb"))
    if not paths:
        raise ConfigError(f"no chapters in {CHAPTERS}: run clmerge book from the project's "
                          "folder (a checkout of it) or set CLMERGE_HOME to that folder")
    if only:
        missing = set(only) - {p.stem for p in paths}
        if missing:
            raise ConfigError(f"unknown chapter(s) {sorted(missing)}; chapters: "
                              f"{', '.join(p.stem for p in paths)}")
        paths = [p for p in paths if p.stem in only]
    return paths


# ---------------------------------------------------------------- parameters


def parse_parameters(items: list[str] | None) -> dict:
    """``["seeds=[0, 1]", "profile=smoke"]`` -> ``{"seeds": [0, 1], "profile": "smoke"}``.

    Each VALUE is read with ``yaml.safe_load`` (``[0, 1]`` a list, ``0.3`` a float, ``True``
    a bool, ``pm[eps=0.3]`` a string); ``None`` (Python's spelling) is None as well.
    """
    params: dict = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"-p {short(item)}: write KEY=VALUE, e.g. -p seeds='[0, 1]'")
        value = load_yaml_text(text, f"-p {key}")
        value = None if value == "None" else value
        if key in params:
            raise ConfigError(f"-p {key} is given twice ({short(params[key])} and "
                              f"{short(value)}); give it once")
        params[key] = value
    return params


def check_parameter_values(selected: dict[str, dict], profile: str) -> None:
    """Refuse, before any chapter runs, a ``-p`` value a chapter cannot use.

    The expected kind comes from the parameter's name where its default (None, a
    mapping) does not say it: ``seeds`` is a list of integers in 0 .. 2**32 - 1 (or one
    integer, or None), ``benchmark`` a registered benchmark (or None), ``benchmarks`` a
    non-empty list of them (or None), ``loss_threshold`` a finite number (or None),
    ``lrs`` a mapping of benchmarks to non-empty lists of learning rates, ``head_check``
    a mapping of benchmarks to mappings of settings, any other mapping default a
    mapping; else it comes from the chapter's default: a list default a list of variant labels that resolve to a valid config on
    ``profile`` (``pm[eps=0.3]``), an int an integer >= 0, a float a finite number, a bool
    a bool, a string a string. ``selected`` is :func:`check_parameters`' answer.
    """
    for stem, params in selected.items():
        declared = chapter_parameters(CHAPTERS / f"{stem}.ipynb")
        for name, value in params.items():
            try:
                default = ast.literal_eval(declared[name]["default"])
            except (ValueError, SyntaxError, KeyError):
                continue
            bad = f"-p {name}={short(value)}: chapter {stem} expects "
            if name == "seeds":
                seeds = [value] if isinstance(value, int) else value
                if value is not None and not (
                        isinstance(seeds, list) and seeds and all(
                            isinstance(x, int) and not isinstance(x, bool)
                            and 0 <= x <= 2**32 - 1 for x in seeds)):
                    raise ConfigError(bad + "a list of integer seeds in 0..4294967295, "
                                            "e.g. -p seeds='[0, 1]'")
            elif name == "benchmark":
                if value is not None and value not in BENCHMARKS:
                    raise ConfigError(bad + f"a benchmark; valid benchmarks: "
                                            f"{', '.join(BENCHMARKS)}")
            elif name == "benchmarks":
                if value is not None and not (isinstance(value, list) and value and all(
                        isinstance(b, str) and b in BENCHMARKS for b in value)):
                    raise ConfigError(bad + f"a list of benchmarks, e.g. -p "
                                            f"benchmarks='[split_mnist5k]'; valid benchmarks: "
                                            f"{', '.join(BENCHMARKS)}")
            elif name == "loss_threshold":
                if value is not None and not _finite(value):
                    raise ConfigError(bad + "a finite number or None")
            elif name == "lrs":
                if not (isinstance(value, dict) and value and all(
                        b in BENCHMARKS and isinstance(rates, list) and rates
                        and all(_finite(r) and r > 0 for r in rates)
                        for b, rates in value.items())):
                    raise ConfigError(bad + "a mapping of benchmarks to lists of learning "
                                            "rates, e.g. -p lrs='{split_mnist5k: [0.001]}'")
            elif name == "head_check" or isinstance(default, dict):
                if not isinstance(value, dict):
                    raise ConfigError(bad + "a mapping, e.g. -p " + name + "='{split_mnist5k: "
                                            "{lr: 0.0003, head: cosine}}'")
                if name == "head_check":
                    for b, overrides in value.items():
                        if b not in BENCHMARKS or not isinstance(overrides, dict):
                            raise ConfigError(bad + "a mapping of benchmarks to mappings of "
                                                    "settings")
                        try:
                            variant_config("seq", profile, b, 0, overrides)
                        except ConfigError as e:
                            raise ConfigError(f"-p {name}: {e}") from None
            elif isinstance(default, list):
                if not (isinstance(value, list) and value
                        and all(isinstance(v, str) and v for v in value)):
                    raise ConfigError(bad + "a non-empty list of variant labels, e.g. "
                                            "-p " + name + "='[seq, pm]'")
                for label in value:
                    try:
                        variant_config(label, profile)
                    except ConfigError as e:
                        raise ConfigError(f"-p {name}: {e}") from None
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(bad + "true or false")
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ConfigError(bad + "an integer >= 0")
            elif isinstance(default, float):
                if not _finite(value):
                    raise ConfigError(bad + "a finite number")
            elif isinstance(default, str):
                if not isinstance(value, str):
                    raise ConfigError(bad + "a string")


def _finite(value) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value))


def chapter_parameters(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """The parameters a chapter declares: ``{name: {"default": SOURCE, "help": COMMENT}}``.

    Read from the cell tagged ``parameters`` with Python's own parser (papermill's
    ``inspect_notebook`` mis-reads a list default that spans lines and contains ``=``, as
    in ``trm[pc=0.0]``), in declaration order; ``help`` is the comment ending the line.
    """
    import nbformat  # the book extra

    nb = nbformat.read(str(path), as_version=4)
    cell = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        return {}
    source = cell.source
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}
    out: dict[str, dict[str, str]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        default = " ".join(ast.get_source_segment(source, value).split())
        for target in targets:
            if isinstance(target, ast.Name):
                out[target.id] = {"default": default,
                                  "help": comments.get(node.end_lineno, "")}
    return out


_OPTIONS = " (and --profile, --results-dir, --force)"


def check_parameters(only: list[str] | None, params: dict) -> dict[str, dict]:
    """Which ``-p`` parameters each chapter gets: ``{stem: {name: value}}``.

    With ``--chapters`` (``only``), every parameter goes to every named chapter, and each
    must be one that chapter declares. Without it, a parameter goes to the chapters that
    declare it, and at least one must. Anything else raises ConfigError, before any work.
    """
    for name in params:
        if name in RESERVED:
            raise ConfigError(f"-p {name}: clmerge book sets {name} itself ({RESERVED[name]})")
    declared = {p.stem: chapter_parameters(p) for p in chapter_paths(only)}
    if only:
        for stem, known in declared.items():
            unknown = [n for n in params if n not in known]
            if unknown:
                settable = [n for n in known if n not in RESERVED]
                valid = (", ".join(settable) + _OPTIONS) if known else \
                    "none (no cell tagged 'parameters')"
                raise ConfigError(f"chapter {stem} has no parameter "
                                  f"{', '.join(map(repr, unknown))}; valid parameters: {valid}")
        return {stem: dict(params) for stem in declared}
    for name in params:
        if not any(name in known for known in declared.values()):
            valid = ", ".join(dict.fromkeys(n for known in declared.values() for n in known
                                            if n not in RESERVED)) + _OPTIONS
            raise ConfigError(f"no chapter has a parameter {name!r}; valid parameters: {valid}")
    return {stem: {n: v for n, v in params.items() if n in known}
            for stem, known in declared.items()}


def parameters_markdown(paths: list[Path] | None = None) -> str:
    """Each chapter's parameters as Markdown tables (for the page on rerunning chapters)."""
    blocks = []
    for path in paths if paths is not None else chapter_paths():
        rows = ["| parameter | default | note |", "|---|---|---|"]
        for name, p in chapter_parameters(path).items():
            default = p["default"].replace("|", "\\|")
            note = p["help"].replace("|", "\\|")
            rows.append(f"| `{name}` | `{default}` | {note} |")
        blocks.append(f"**`{path.stem}`**\n\n" + "\n".join(rows))
    return "\n\n".join(blocks)


def data_version(folder: Path | None = None) -> str:
    """``data.<digest>``: the first 12 hex digits of a sha256 over the relative path and
    the bytes of every file under ``folder`` (default: the project's data folder), in
    sorted order; "data.none" when there is no such folder. About 0.2 s for 20 MB."""
    import hashlib

    folder = data_dir() if folder is None else Path(folder)
    if not folder.is_dir():
        return "data.none"
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return "data." + h.hexdigest()[:12]


def base_parameters(profile: str, force: bool = False,
                    results_dir: str | None = None) -> dict:
    params = {"profile": profile, "force": force, "clmerge_version": clmerge.__version__,
              "data_version": data_version()}
    if results_dir:
        params["results_dir"] = str(Path(results_dir).resolve())
    return params


# ---------------------------------------------------------------- execution


@contextlib.contextmanager
def _quiet_papermill():
    """Silence papermill's own parameter checks (``Unable to parse line``, ``Passed unknown
    parameter``): its parser mis-reads some valid cells, and check_parameters has already
    checked every parameter."""
    log = logging.getLogger("papermill")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def execute_chapters(profile: str, force: bool = False, results_dir: str | None = None,
                     only: list[str] | None = None, params: dict | None = None) -> Path:
    """Run each selected chapter through papermill; return the folder of executed notebooks.
    A chapter that stops raises :class:`ChapterError` (a ConfigError in the chapter is
    the user's: exit status 2; anything else 1)."""
    import papermill as pm  # the book extra
    from papermill.exceptions import PapermillExecutionError

    extra = check_parameters(only, params or {})
    out = BUILD / "executed" / profile
    out.mkdir(parents=True, exist_ok=True)
    base = base_parameters(profile, force, results_dir)
    for nb in chapter_paths(only):
        t0 = time.perf_counter()
        print(f"executing {nb.name} (profile {profile})", flush=True)
        with _quiet_papermill():
            try:
                pm.execute_notebook(str(nb), str(out / nb.name),
                                    parameters={**base, **extra[nb.stem]}, cwd=str(nb.parent),
                                    kernel_name="python3", progress_bar=False,
                                    log_output=False)
            except PapermillExecutionError as e:
                raise ChapterError(nb.stem, e, out / nb.name) from None
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def prepare_chapters(dest: Path, profile: str, force: bool = False,
                     results_dir: str | None = None, only: list[str] | None = None,
                     params: dict | None = None) -> list[Path]:
    """Write every chapter, parameterized but not executed, into ``dest``.

    Every chapter is part of the book; the ``-p`` parameters go where check_parameters
    sends them (the selected chapters), on top of the base parameters. ``force`` too goes
    to the selected chapters only (to all when none is selected): a chapter not named
    keeps its cached execution instead of recomputing every result it reads.
    """
    import papermill as pm  # the book extra

    extra = check_parameters(only, params or {})
    selected = {p.stem for p in chapter_paths(only)}
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for nb in chapter_paths():
        target = dest / nb.name
        base = base_parameters(profile, force and nb.stem in selected, results_dir)
        with _quiet_papermill():
            pm.execute_notebook(str(nb), str(target),
                                parameters={**base, **extra.get(nb.stem, {})},
                                prepare_only=True, kernel_name="python3", progress_bar=False,
                                log_output=False)
        hide_injected_parameters(target)
        written.append(target)
    return written


def hide_injected_parameters(path: Path) -> None:
    """Tag the cell papermill injected (``injected-parameters``) ``remove-cell``: the page
    shows the chapter's own parameters cell, not the values ``clmerge book`` set (the
    execution appendix names the profile and the version). Tags are not part of the
    execution cache's key."""
    import nbformat  # the book extra

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
    nbformat.write(nb, str(path))


def stage_source(dest: Path | None = None) -> Path:
    """Copy the book's pages (not the chapter notebooks) to ``_build/book_src``.

    Pages are copied with a fresh modification time, so Sphinx reads every page on every
    build: a page that computes its content (``rerun.md`` lists the chapters' parameters)
    is always current. Reading is cheap; executing goes through the cache.
    """
    src = dest or BUILD / "book_src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    for name in BOOK_FILES:
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    if (ROOT / "_static").is_dir():   # the book's CSS (jupyter-book includes _static/*.css)
        shutil.copytree(ROOT / "_static", src / "_static")
    stage_mathjax(src)
    for md in ROOT.glob("*.md"):
        if md.name != "README.md":
            shutil.copy(md, src / md.name)
    (src / "chapters").mkdir()
    for f in CHAPTERS.iterdir():
        if f.suffix in PAGE_SUFFIXES:
            shutil.copy(f, src / "chapters" / f.name)
    return src


def stage_mathjax(src: Path, mathjax: Path | None = None) -> bool:
    """Copy MathJax's :data:`MATHJAX_PARTS` into ``src/_mathjax/mathjax``, which
    ``_config.yml``'s ``html_extra_path`` copies to the built book and ``mathjax_path``
    points at. Without the package, the staged
    ``_config.yml`` drops its MathJax settings, so the pages load Sphinx's default MathJax
    from its CDN (math then needs a network), and one line says so. True when copied."""
    mathjax = mathjax or MATHJAX
    if not (mathjax / "MathJax.js").is_file():
        import yaml

        config_path = src / "_config.yml"
        config = yaml.safe_load(config_path.read_text())
        sphinx_config = config.get("sphinx", {}).get("config", {})
        for key in ("mathjax_path", "mathjax2_config", "myst_update_mathjax",
                    "html_extra_path"):
            sphinx_config.pop(key, None)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        print(f"no MathJax at {mathjax} (Debian's libjs-mathjax; `make env` installs it): "
              "the pages load MathJax from its CDN, so math needs a network to show")
        return False
    target = src / "_mathjax" / "mathjax"
    for part in MATHJAX_PARTS:
        source = mathjax / part
        if source.is_dir():
            shutil.copytree(source, target / part, dirs_exist_ok=True)
        else:
            (target / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target / part)
    return True


def build_html(src: Path) -> int:
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(src),
           "--path-output", str(BUILD.parent), "--warningiserror", "--keep-going"]
    print(" ".join(cmd), flush=True)
    # cwd: the execution cache's path in _config.yml is relative to the repository root
    return subprocess.run(cmd, cwd=ROOT).returncode


def prefill_cache(src: Path, jobs: int | None = None) -> dict:
    """Execute the staged chapters the execution cache lacks, ``jobs`` kernels at a time,
    into that cache (:mod:`clmerge.book_cache`), so that the build finds them there. Only
    with ``execute_notebooks: cache``; pages in MyST text are left to the build."""
    settings = book_cache.execute_settings(src / "_config.yml")
    if settings["mode"] != "cache" or not settings["cache"]:
        return {}
    notebooks = sorted((src / "chapters").glob("*.ipynb"))
    return book_cache.prefill(notebooks, ROOT / settings["cache"], settings["timeout"],
                              settings["allow_errors"], jobs)


def build_book(profile: str = "quick", force: bool = False, html: bool = True,
               only: list[str] | None = None, results_dir: str | None = None,
               params: dict | None = None, jobs: int | None = None) -> int:
    params = params or {}
    check_parameters(only, params)  # before anything runs or is written
    if not html:
        execute_chapters(profile, force, results_dir, only, params)
        return 0
    src = stage_source()
    prepare_chapters(src / "chapters", profile, force, results_dir, only, params)
    prefill_cache(src, jobs)   # prints its own time
    t0 = time.perf_counter()
    rc = build_html(src)
    print(f"jupyter-book build: {time.perf_counter() - t0:.0f} s (exit status {rc})")
    if rc == 0:
        print(f"book: {BUILD / 'html' / 'index.html'}")
    return rc
