"""clmerge: model merging for continual learning (P&M, TRM and baselines) on Avalanche."""

import hashlib as _hashlib
import warnings as _warnings
from pathlib import Path as _Path

_RELEASE = "0.1.0"


def source_digest(package_dir=None) -> str:
    """First 10 hex digits of a sha256 over the package's code and profiles.

    Covers every ``**/*.py`` and ``profiles/*.yaml`` under ``package_dir`` (default: this
    package), sorted by relative path; each file contributes its relative path and its
    bytes, so an edit, an added, removed or renamed file all change the digest.
    """
    root = _Path(package_dir) if package_dir is not None else _Path(__file__).resolve().parent
    files = [*root.rglob("*.py"), *(root / "profiles").glob("*.yaml")]
    h = _hashlib.sha256()
    for rel, path in sorted((p.relative_to(root).as_posix(), p) for p in files):
        h.update(rel.encode() + b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:10]


# "0.1.0+src.<digest>": changes whenever the code changes. `clmerge book` injects it into
# every chapter, so the book's execution cache (keyed on the code cells) misses on a code
# change, and every result records which code made it.
__version__ = f"{_RELEASE}+src.{source_digest()}"

# Libraries clmerge imports pull in tqdm.auto, which warns inside notebooks without
# ipywidgets; clmerge's own progress bars are plain text, so the warning is noise.
_warnings.filterwarnings("ignore", message="IProgress not found")
