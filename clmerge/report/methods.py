"""The book's page on how each method works, written from the code's own docstrings.

Each merger's module docstring states its rule, its source (paper and arXiv id), its
defaults and every deviation from the paper; training-time parts (P&M's perturbation,
TRM's trajectory recorder) document themselves the same way. :func:`methods_markdown`
puts them on one page, in the order of ``clmerge list methods``, so the page can never
disagree with what runs.
"""

from __future__ import annotations

import importlib
import re

from clmerge.report.names import readable

# training-time modules whose docstrings belong with a method's merger
TRAINING_MODULES = {"pm": ["clmerge.plugins.perturbation"],
                    "trm": ["clmerge.plugins.trajectory"],
                    "ewc": ["clmerge.plugins.regularization"],
                    "lwf": ["clmerge.plugins.regularization"]}
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def _clean(doc: str) -> str:
    """Sphinx roles to plain names (``:func:`~a.b``` -> ``a.b``)."""
    return _ROLE.sub(r"\1", doc.strip())


def _module_doc(name: str) -> str:
    try:
        return _clean(importlib.import_module(name).__doc__ or "")
    except ImportError:
        return ""


def method_section(name: str, seen: set[str] | None = None) -> str:
    """The body of ``name``'s section: its one-line description, then the docstrings of
    the modules that implement it (merger first), verbatim in a text block. A module in
    ``seen`` (already shown) is named instead of repeated."""
    from clmerge.mergers.sequential import Sequential
    from clmerge.strategies.methods import get_method

    spec = get_method(name)
    seen = set() if seen is None else seen
    modules = []
    merger = getattr(spec, "merger", None)
    if merger is not None and (merger is not Sequential or name == "seq"):
        modules.append(merger.__module__)
    modules += TRAINING_MODULES.get(name, [])
    text = [spec.description[0].upper() + spec.description[1:] + "."]
    for module in modules:
        if module in seen:
            text += ["", f"Documented in an earlier section: `{module}`."]
            continue
        seen.add(module)
        doc = _module_doc(module)
        if doc:
            text += ["", f"From `{module}`:", "", "```text", doc, "```"]
    return "\n".join(text)


def method_names() -> list[str]:
    """Every registered method, in the order of ``clmerge list methods``."""
    from clmerge.strategies.methods import METHODS

    return list(METHODS)
