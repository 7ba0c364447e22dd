"""The package's boundary: what ``clmerge run`` loads, and the package working installed
(not as a checkout) from any folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SHOW_MODULES = """
import json, sys
from clmerge.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules
                                                   if m.startswith("clmerge"))}))
"""


def _env(**extra) -> dict:
    """The environment less clmerge's settings and any PYTHONPATH (which would put a
    checkout before the installed package)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CLMERGE_") and k != "PYTHONPATH"}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def test_clmerge_run_imports_no_book_or_report_module(tmp_path):
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-c", SHOW_MODULES, "run", "--method", "nmc", "--profile", "smoke",
         "--quiet", "--out", str(out)],
        cwd=tmp_path, env=_env(PYTHONPATH=str(REPO)), capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = json.loads(done.stdout.splitlines()[-1])
    assert shown["code"] == 0 and list(out.glob("nmc-synthetic-s0-*.json"))
    assert "clmerge.experiment.runner" in shown["modules"]        # it did run
    loaded = [m for m in shown["modules"]
              if m.startswith(("clmerge.book", "clmerge.report"))]
    assert loaded == []


@pytest.mark.slow
def test_the_installed_package_runs_from_another_folder(tmp_path):
    """``pip install .`` (a wheel built from a copy of the sources, not an editable
    install) into a fresh virtual environment that sees this environment's packages,
    then ``clmerge run --method pm --profile smoke --out DIR`` from a folder with no
    data: the result lands in DIR and nothing is written next to the package or in the
    working folder; without ``--out``, in the working folder's ``data/results``."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (src / name).write_bytes((REPO / name).read_bytes())
    subprocess.run(["cp", "-r", str(REPO / "clmerge"), str(src / "clmerge")], check=True)
    for cache in src.rglob("__pycache__"):
        subprocess.run(["rm", "-rf", str(cache)], check=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # this environment's packages (torch, avalanche, ...) as plain paths: its own .pth
    # files, the editable install of this checkout among them, are not processed
    (Path(purelib) / "parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", "--no-build-isolation", str(src)],
                   check=True, env=_env(), timeout=300)
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "out"
    elsewhere.mkdir()
    done = subprocess.run([str(venv / "bin" / "clmerge"), "run", "--method", "pm",
                           "--profile", "smoke", "--quiet", "--out", str(out)],
                          cwd=elsewhere, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    where = subprocess.run([str(python), "-c", "import clmerge; print(clmerge.__file__)"],
                           cwd=elsewhere, env=_env(), capture_output=True, text=True,
                           check=True).stdout.strip()
    assert Path(where).is_relative_to(venv)            # the installed copy ran
    assert len(list(out.glob("pm-synthetic-s0-*.json"))) == 1
    assert not (out / "_checkpoints").exists()
    assert list(elsewhere.iterdir()) == []
    # without --out: the working folder's data/results (clmerge.paths), not the package's
    done = subprocess.run([str(venv / "bin" / "clmerge"), "run", "--method", "nmc",
                           "--profile", "smoke", "--quiet"],
                          cwd=elsewhere, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((elsewhere / "data" / "results").glob("nmc-synthetic-s0-*.json"))) == 1
    written = [p for p in venv.rglob("*") if ".dist-info" not in str(p)
               and (p.suffix in (".json", ".lock") or p.name in ("data", "_checkpoints"))]
    assert written == []
