"""What a chapter notebook needs from its kernel: errors a reader can cause in one sentence.

A chapter run with a bad parameter (``papermill ... -p profile quik``) stops at the cell
that reads it with a :class:`~clmerge.experiment.config.ConfigError`. In a notebook that
would print a traceback of the library's internals; :func:`one_sentence_errors` makes the
kernel show the error's one sentence instead. The cell still fails (papermill stops and
exits 1, jupyter-book reports the chapter), only the traceback is gone.
"""

from __future__ import annotations

from clmerge.experiment.config import ConfigError


def _one_sentence(shell, etype, value, tb, tb_offset=None):
    """IPython custom-exception handler: the structured traceback is the message alone."""
    text = f"{etype.__name__}: {value}"
    shell._showtraceback(etype, value, [text])
    return [text]


def one_sentence_errors() -> bool:
    """In an IPython kernel, show every ConfigError as its message alone (one line, no
    traceback); elsewhere do nothing. Returns whether a kernel was found."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False
    shell.set_custom_exc((ConfigError,), _one_sentence)
    return True
