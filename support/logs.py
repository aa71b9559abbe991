"""The ``lossbench`` logger: every message of the package goes through it (no ``print``).

Each module logs to a child, ``get("data")`` -> ``lossbench.data``, printed as ``[data] message``.
By default INFO and above go to the *current* ``sys.stdout`` (so notebooks and ``capsys`` see them
where the old prints went); the logger does not propagate, so a root ``logging.basicConfig`` does
not print each line twice (the library-root-logger habit of ``transformers.utils.logging``).

    import logging; logging.getLogger("lossbench").setLevel(logging.WARNING)   # warnings only
    logging.getLogger("lossbench.data").setLevel(logging.WARNING)              # one part only
    support.logs.propagate()                                                   # hand records to your own handlers
"""
from __future__ import annotations

import contextlib
import logging
import sys

ROOT = "lossbench"


class _StdoutHandler(logging.StreamHandler):
    """A StreamHandler that writes to whatever ``sys.stdout`` is at emit time (Jupyter, pytest capture)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value):  # StreamHandler.__init__ assigns it; the live sys.stdout wins
        pass


class _TagFormatter(logging.Formatter):
    """``lossbench.data`` -> ``[data] message``; WARNING and above also name their level."""

    def format(self, record: logging.LogRecord) -> str:
        tag = record.name.split(".", 1)[1] if "." in record.name else record.name
        level = f"{record.levelname}: " if record.levelno >= logging.WARNING else ""
        return f"[{tag}] {level}{record.getMessage()}"


def _root() -> logging.Logger:
    """The package logger, given its default handler once (adding a handler to one's own logger is no
    global change: the root logger and other libraries are untouched)."""
    logger = logging.getLogger(ROOT)
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(_TagFormatter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def get(name: str) -> logging.Logger:
    """The logger ``lossbench.<name>`` (e.g. ``get("train")``)."""
    _root()
    return logging.getLogger(f"{ROOT}.{name}")


def propagate(on: bool = True) -> None:
    """Send records to the root logger's handlers instead of (``on=True``) the default stdout handler."""
    logger = _root()
    logger.propagate = on
    for h in logger.handlers:
        if isinstance(h, _StdoutHandler):
            h.setLevel(logging.CRITICAL + 1 if on else logging.NOTSET)


@contextlib.contextmanager
def quiet(name: str, enabled: bool = True):
    """Within the block, ``lossbench.<name>`` logs warnings and errors only (``verbose=False``)."""
    logger = get(name)
    old = logger.level
    if enabled:
        logger.setLevel(logging.WARNING)
    try:
        yield logger
    finally:
        logger.setLevel(old)
