"""The commands the book tells readers to run (index page, rerun page) work.

Every ``bash`` block line of ``index.md`` and ``chapters/rerun.md`` that calls
``.venv/bin/papermill`` or ``.venv/bin/clmerge`` is a case. Always (fast): the command
parses, names a chapter that exists and only parameters that chapter declares.
With ``CLMERGE_RUN_COMMANDS=1`` (``make commands``, after building the smoke book): each
command is run on the ``smoke`` profile, with its results in one shared folder, and must
exit with the status the page gives it (0 unless its comment says ``exit N``). With
``CLMERGE_RUN_COMMANDS=light`` (CI, ``make smoke-book``) only those that execute no
chapter run (``clmerge run``, ``clmerge list``, a book command refused before it starts):
the chapters' executions take most of ten minutes on two cores.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from clmerge import book, cli

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "index.md", ROOT / "chapters" / "rerun.md"]
BIN = Path(sys.executable).parent
RUN = os.environ.get("CLMERGE_RUN_COMMANDS", "") in ("1", "light")
# "light" (CI): only the commands that execute no chapter; "1" (make commands): all
LIGHT = os.environ.get("CLMERGE_RUN_COMMANDS") == "light"
# the command (after ``clmerge``) that built the smoke book this check follows, if any: a
# page command that maps to it on smoke has just run, and is not run twice
BUILT = shlex.split(os.environ.get("CLMERGE_COMMANDS_BUILT", ""))


def page_commands() -> list[tuple[str, list[str], int]]:
    """(page, argv, expected exit status) of every papermill/clmerge line in bash blocks."""
    out = []
    for page in PAGES:
        text = page.read_text()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            for line in block.splitlines():
                line = line.strip()
                if not line.startswith((".venv/bin/papermill", ".venv/bin/clmerge")):
                    continue
                code, _, comment = line.partition("  #")
                status = re.search(r"exit (\d)", comment)
                out.append((page.name, shlex.split(code), int(status[1]) if status else 0))
    return out


CASES = page_commands()
IDS = [f"{page}:{' '.join(argv[:4])}" for page, argv, _ in CASES]


def _papermill_parameters(argv: list[str]) -> tuple[str, dict]:
    notebook, params, i = argv[1], {}, 3
    while i < len(argv):
        if argv[i] in ("-p", "--parameters"):
            params[argv[i + 1]] = argv[i + 2]
            i += 3
        elif argv[i] in ("-y", "--parameters_yaml"):
            import yaml

            params.update(yaml.safe_load(argv[i + 1]))
            i += 2
        else:
            i += 1
    return notebook, params


def test_the_pages_have_commands():
    assert any("papermill" in argv[0] for _, argv, _ in CASES)
    assert any(p == "index.md" and "papermill" in argv[0] for p, argv, _ in CASES)
    assert sum(1 for _, argv, _ in CASES if argv[0].endswith("clmerge")) >= 5


@pytest.mark.parametrize("page,argv,status", CASES, ids=IDS)
def test_command_names_what_exists(page, argv, status):
    if argv[0].endswith("papermill"):
        notebook, params = _papermill_parameters(argv)
        assert (ROOT / notebook).exists(), f"{page}: no notebook {notebook}"
        declared = book.chapter_parameters(ROOT / notebook)
        assert set(params) <= set(declared), f"{page}: {set(params) - set(declared)} unknown"
        return
    args = cli.build_parser().parse_args(argv[1:])
    if args.command == "book":
        params = book.parse_parameters(args.parameters)
        if status == 2:
            with pytest.raises(Exception):
                book.check_parameters(args.chapters, params)
        else:
            book.check_parameters(args.chapters, params)


def on_smoke(argv: list[str], results: Path, tmp: Path) -> list[str]:
    """The same command on the smoke profile, with results in ``results``."""
    argv = list(argv)
    argv[0] = str(BIN / Path(argv[0]).name)
    for flag in ("--profile", "--benchmark", "--results-dir", "--out"):
        while flag in argv:
            i = argv.index(flag)
            del argv[i:i + 2]
    if argv[0].endswith("papermill"):
        argv[2] = str(tmp / "out.ipynb")
        for i, a in enumerate(argv):
            if a == "profile" and argv[i - 1] == "-p":
                argv[i + 1] = "smoke"
        return argv + ["-p", "profile", "smoke", "-p", "results_dir", str(results)]
    sub = argv[1]
    if sub == "run":
        return argv + ["--profile", "smoke", "--out", str(results), "--quiet"]
    if sub == "book":
        return argv + ["--profile", "smoke", "--results-dir", str(results)]
    return argv


def executes_a_chapter(argv: list[str]) -> bool:
    """Whether the command runs a chapter: papermill, or ``clmerge book`` past its checks
    (a command the page expects to fail with exit status 2 stops before)."""
    return argv[0].endswith("papermill") or argv[1] == "book"


@pytest.mark.skipif(not RUN, reason="set CLMERGE_RUN_COMMANDS=1 to run the pages' commands")
@pytest.mark.parametrize("page,argv,status", CASES, ids=IDS)
def test_command_runs_on_smoke(page, argv, status, tmp_path):
    results = Path(os.environ.get("CLMERGE_COMMANDS_RESULTS", tmp_path / "results"))
    if LIGHT and status == 0 and executes_a_chapter(argv):
        pytest.skip("executes a chapter: `make commands` runs it")
    cmd = on_smoke(argv, results, tmp_path)
    if BUILT and cmd[1:] == BUILT:
        pytest.skip("on smoke this is the command that built the book this check follows")
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    tail = (done.stdout + done.stderr)[-2000:]
    assert done.returncode == status, f"{' '.join(cmd)} -> {done.returncode}:\n{tail}"
    if status == 2:   # a user error: one sentence, no traceback
        assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0, tail
