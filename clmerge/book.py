"""``clmerge book``: execute every chapter with papermill, then build the HTML.

1. Each ``chapters/*.ipynb`` runs through papermill with ``profile`` (and
   ``results_dir``/``force`` when given) injected into its ``parameters`` cell; the
   executed copy goes to ``_build/executed/<profile>/``. Chapters read and write only
   result files, so they run in any order and each in a fresh kernel.
2. The book source (``_config.yml``, ``_toc.yml``, pages, bibliography) is staged in
   ``_build/book_src`` with the executed notebooks in place of the committed (output-free)
   ones, and ``jupyter-book build`` renders it to ``_build/html`` with warnings as errors.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "_build"
BOOK_FILES = ["_config.yml", "_toc.yml", "references.bib"]


def chapter_paths(only: list[str] | None = None) -> list[Path]:
    paths = sorted((ROOT / "chapters").glob("*.ipynb"))
    if only:
        missing = set(only) - {p.stem for p in paths}
        if missing:
            from clmerge.experiment.config import ConfigError
            raise ConfigError(f"unknown chapter(s) {sorted(missing)}; chapters: "
                              f"{', '.join(p.stem for p in paths)}")
        paths = [p for p in paths if p.stem in only]
    return paths


def execute_chapters(profile: str, force: bool = False, results_dir: str | None = None,
                     only: list[str] | None = None) -> Path:
    """Run each chapter through papermill; return the folder of executed notebooks."""
    import papermill as pm

    out = BUILD / "executed" / profile
    out.mkdir(parents=True, exist_ok=True)
    params = {"profile": profile, "force": force}
    if results_dir:
        params["results_dir"] = str(Path(results_dir).resolve())
    for nb in chapter_paths(only):
        t0 = time.perf_counter()
        print(f"executing {nb.name} (profile {profile})", flush=True)
        pm.execute_notebook(str(nb), str(out / nb.name), parameters=params,
                            cwd=str(nb.parent), kernel_name="python3", progress_bar=False,
                            log_output=False)
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def stage_source(executed: Path) -> Path:
    """Copy the book's pages to _build/book_src with executed chapters in place."""
    src = BUILD / "book_src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    for name in BOOK_FILES:
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    for md in ROOT.glob("*.md"):
        if md.name != "README.md":
            shutil.copy2(md, src / md.name)
    (src / "chapters").mkdir()
    for f in (ROOT / "chapters").iterdir():
        if f.suffix in (".md", ".png", ".svg"):
            shutil.copy2(f, src / "chapters" / f.name)
    for nb in executed.glob("*.ipynb"):
        shutil.copy2(nb, src / "chapters" / nb.name)
    return src


def build_html(src: Path) -> int:
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(src),
           "--path-output", str(ROOT), "--warningiserror", "--keep-going"]
    print(" ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


def build_book(profile: str = "quick", force: bool = False, html: bool = True,
               only: list[str] | None = None, results_dir: str | None = None) -> int:
    executed = execute_chapters(profile, force, results_dir, only)
    if not html:
        return 0
    rc = build_html(stage_source(executed))
    if rc == 0:
        print(f"book: {BUILD / 'html' / 'index.html'}")
    return rc
