"""The how-to ``chapters/add_a_merger.md`` works as written: its python blocks, executed
in order (the merger file as a temporary module, then the registration line and the
page's own checks), add a merger that runs through the whole pipeline."""

import re
import sys
import types
from pathlib import Path

import pytest

from clmerge.errors import ConfigError
from clmerge.experiment.config import make_config
from clmerge.experiment.runner import run_experiment
from clmerge.strategies.methods import METHODS

PAGE = Path(__file__).resolve().parents[1] / "chapters" / "add_a_merger.md"
NAME = "window"
MODULE = "clmerge.mergers.window"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.fixture
def howto():
    """Execute the page's python blocks; afterwards remove what they registered."""
    assert NAME not in METHODS and MODULE not in sys.modules, \
        "the how-to's example name is taken: rename the example in the page and here"
    blocks = python_blocks(PAGE.read_text())
    assert len(blocks) == 3, "expected: merger file, registration line, checks"
    module = types.ModuleType(MODULE)  # the merger file, as if saved under clmerge/mergers/
    module.__file__ = str(PAGE)
    sys.modules[MODULE] = module
    try:
        exec(compile(blocks[0], f"{PAGE.name}:merger", "exec"), module.__dict__)
        exec(compile(blocks[1], f"{PAGE.name}:registration", "exec"), {})
        yield blocks
    finally:
        METHODS.pop(NAME, None)
        sys.modules.pop(MODULE, None)


def test_howto_merger_runs_through_the_pipeline(howto):
    assert METHODS[NAME].merger is sys.modules[MODULE].Window
    exec(compile(howto[2], f"{PAGE.name}:checks", "exec"), {})  # the page's own checks
    r = run_experiment(make_config(NAME, profile="smoke", overrides={f"{NAME}.k": 2}),
                       progress=False)
    T = len(r["R"])
    assert [t["coefficient"] for t in r["tasks"]] == [1.0] + [0.5] * (T - 1)
    # chance is 0.5 task-incremental (2 classes per head); seq reaches ~0.87 here
    assert r["metrics"]["til"]["A_last"] >= 0.7


def test_howto_option_validation_names_the_option(howto):
    with pytest.raises(ConfigError, match="k must be >= 1"):
        make_config(NAME, profile="smoke", overrides={f"{NAME}.k": 0})
    with pytest.raises(ConfigError, match="valid options of 'window': k"):
        make_config(NAME, profile="smoke", overrides={f"{NAME}.kk": 2})


def test_registry_is_clean_after_the_howto():
    assert NAME not in METHODS and MODULE not in sys.modules
