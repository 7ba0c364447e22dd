"""Where clmerge reads and writes outside the package: from settings, or from the
working directory, never from where the package is installed.

- the project folder: ``$CLMERGE_HOME`` when set; else the nearest of the working
  directory and its parents that holds a ``data`` folder (run from anywhere inside a
  checkout of the project, that is the checkout); else the working directory itself;
- the data folder: ``<project>/data`` (committed results, claims, calibration tables,
  the letters ViT's checkpoint);
- the results folder: ``$CLMERGE_RESULTS`` when set, else ``<data>/results`` (``clmerge
  run`` writes there unless given ``--out``; a run's checkpoints go to
  ``<results>/_checkpoints``);
- the scratch results folder, where chapters write what they compute unless told
  otherwise: ``$CLMERGE_SCRATCH`` when set, else ``<project>/_build/results``.

Each function reads the environment and the working directory when it is called; a
module that keeps a default folder as a constant
(:data:`clmerge.experiment.runner.DEFAULT_RESULTS`, ...) calls it when it is imported.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_dir() -> Path:
    """The project folder (module docstring)."""
    home = os.environ.get("CLMERGE_HOME")
    if home:
        return Path(home).expanduser().resolve()
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "data").is_dir():
            return folder
    return cwd


def data_dir() -> Path:
    """``<project>/data``."""
    return project_dir() / "data"


def results_dir() -> Path:
    """``$CLMERGE_RESULTS``, else ``<data>/results``."""
    value = os.environ.get("CLMERGE_RESULTS")
    return Path(value).expanduser().resolve() if value else data_dir() / "results"


def scratch_dir() -> Path:
    """``$CLMERGE_SCRATCH``, else ``<project>/_build/results``."""
    value = os.environ.get("CLMERGE_SCRATCH")
    return Path(value).expanduser().resolve() if value else project_dir() / "_build" / "results"
