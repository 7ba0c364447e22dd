"""A method is added by registering it, never by editing the runner: the runner hands
any :class:`~clmerge.strategies.method.Method` the run's context, writes the rows it
yields into R and R_til and its records into the result, checkpoints after each row
when the method names state to checkpoint (and only then), and resumes it from the row
after the last checkpoint."""

from __future__ import annotations

import pytest

from clmerge.experiment.config import make_config
from clmerge.experiment.runner import Run, run_experiment
from clmerge.strategies.context import RunContext
from clmerge.strategies.method import Method
from clmerge.strategies.methods import METHODS, MethodSpec, register_method


def cell(t: int, j: int) -> tuple[float, float]:
    """The oracle: (class-, task-incremental) accuracy on test experience j after t."""
    return (j + 1) / (t + 2), 1 - (j + 1) / (2 * (t + 2))


class Rows(Method):
    """Trains nothing: row t is the oracle's; remembers which experiences it was run on
    and which context it got."""

    kind = "rows"
    fail_before: int | None = None     # raise when asked for this row (an interrupted run)
    resumable = True

    def __init__(self, spec, options, ctx: RunContext):
        self.seen: list[int] = []
        self.starts: list[int] = []
        self.contexts: list = []

    def run(self, ctx, start=0):
        self.starts.append(start)
        self.contexts.append(ctx)
        for t in range(start, ctx.stream.n_experiences):
            if t == self.fail_before:
                raise RuntimeError("stopped")
            self.seen.append(t)
            yield [cell(t, j)[0] for j in range(t + 1)], [cell(t, j)[1] for j in range(t + 1)]

    def records(self):
        return [{"experience": t, "n_seen": i + 1} for i, t in enumerate(self.seen)]

    def checkpointed(self):
        return {"rows": self} if self.resumable else None


@pytest.fixture
def rows_method():
    spec = register_method(MethodSpec("rows_oracle", "test method: the oracle's rows",
                                      method=Rows))
    try:
        yield spec
    finally:
        METHODS.pop(spec.name)
        Rows.fail_before, Rows.resumable = None, True


def config():
    return make_config("rows_oracle", profile="smoke", seed=0)


def oracle(T: int):
    R = [[cell(t, j)[0] if j <= t else None for j in range(T)] for t in range(T)]
    R_til = [[cell(t, j)[1] if j <= t else None for j in range(T)] for t in range(T)]
    return R, R_til


def test_a_registered_method_runs_through_the_unchanged_runner(rows_method):
    run = Run(config())
    assert type(run.method) is Rows
    R, R_til, tasks = run.execute()
    T = run.stream.n_experiences
    assert T >= 3
    want_R, want_til = oracle(T)
    assert R == [r[: t + 1] for t, r in enumerate(want_R)]
    assert R_til == [r[: t + 1] for t, r in enumerate(want_til)]
    assert tasks == [{"experience": t, "n_seen": t + 1} for t in range(T)]
    assert run.method.starts == [0]
    ctx = run.method.contexts[0]
    assert isinstance(ctx, RunContext) and ctx is run.context
    assert ctx.stream is run.stream and ctx.model is run.model and ctx.config is run.cfg

    result = run_experiment(config(), progress=False)
    assert (result["R"], result["R_til"]) == (want_R, want_til)
    assert result["tasks"] == tasks


def test_an_interrupted_method_resumes_after_its_last_checkpoint(rows_method, tmp_path):
    T = Run(config()).stream.n_experiences
    Rows.fail_before = 2
    first = Run(config(), checkpoint_dir=tmp_path)
    with pytest.raises(RuntimeError, match="stopped"):
        first.execute()
    assert (tmp_path / "state.json").exists()

    Rows.fail_before = None
    second = Run(config(), checkpoint_dir=tmp_path)
    R, R_til, tasks = second.execute()
    assert second.resumed_from == 1
    assert second.method.starts == [0, 2]                # the first run's, restored; then 2
    assert second.method.seen == list(range(T))          # restored 0, 1; ran 2..T-1
    want_R, want_til = oracle(T)
    assert R == [r[: t + 1] for t, r in enumerate(want_R)]
    assert R_til == [r[: t + 1] for t, r in enumerate(want_til)]
    assert tasks == [{"experience": t, "n_seen": t + 1} for t in range(T)]


def test_a_method_with_nothing_to_checkpoint_writes_none_and_reruns(rows_method, tmp_path):
    Rows.resumable = False
    Rows.fail_before = 2
    with pytest.raises(RuntimeError):
        Run(config(), checkpoint_dir=tmp_path).execute()
    assert list(tmp_path.iterdir()) == []
    Rows.fail_before = None
    run = Run(config(), checkpoint_dir=tmp_path)
    R, _, _ = run.execute()
    assert run.resumed_from is None and run.method.starts == [0]
    assert len(R) == run.stream.n_experiences and list(tmp_path.iterdir()) == []
