"""Logging of the command line: short lines on the terminal, every detail in a log file.

The terminal (stderr) shows cfhdask's own progress lines (INFO by default,
WARNING with ``-q``, DEBUG and every library with ``-vv``) and one line per
failure.  Everything else — Dask's messages, worker tracebacks, the
traceback of an unexpected error or of Ctrl-C — goes to a log file,
``cfhdask-<command>-<time>-<pid>.log`` in the temporary folder (or
``$CFHDASK_LOG_DIR``), whose path is printed when something failed.

Dask workers started by the command (an embedded LocalCluster) log to the
same file: their logging configuration travels in the
``DASK_DISTRIBUTED__LOGGING`` environment variable they inherit.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import tempfile
from collections.abc import Iterator

from cfhdask.cluster.batch import LOGGING_ENV

__all__ = ["LOG_FORMAT", "log_file_path", "logging_to", "one_line"]

LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
_TERMINAL_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Environment variable Dask reads its ``distributed.logging`` config from (batch jobs
#: unset it: their workers log to the jobs' own files).
_WORKER_ENV = LOGGING_ENV


def log_file_path(command: str) -> str:
    """Where this run's log file goes: ``<dir>/cfhdask-<command>-<time>-<pid>.log``."""
    folder = os.environ.get("CFHDASK_LOG_DIR") or tempfile.gettempdir()
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join(folder, f"cfhdask-{command}-{stamp}-{os.getpid()}.log")


def one_line(exc: BaseException) -> str:
    """An exception as one line: its message's first line (its type when not ours).

    Registered credentials are redacted (a library's error may quote them).
    """
    from cfhdask.errors import CfhdaskError
    from cfhdask.secrets import redact

    lines = [ln for ln in redact(exc).strip().splitlines() if ln.strip()]
    first = lines[0].strip() if lines else ""
    if isinstance(exc, CfhdaskError):
        return first or type(exc).__name__
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class _Terminal(logging.Filter):
    """cfhdask records at the chosen level; other libraries only with ``-vv``."""

    def __init__(self, everything: bool):
        super().__init__()
        self.everything = everything

    def filter(self, record: logging.LogRecord) -> bool:
        return self.everything or record.name == "cfhdask" or record.name.startswith("cfhdask.")


def _worker_logging(path: str) -> dict:
    """A ``logging.config.dictConfig`` sending Dask workers' records to ``path``."""
    handler = {"class": "logging.FileHandler", "filename": path, "formatter": "plain",
               "level": "INFO"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": LOG_FORMAT}},
        "handlers": {"file": handler},
        "loggers": {name: {"level": level, "handlers": ["file"], "propagate": False}
                    for name, level in (("distributed", "INFO"), ("bokeh", "ERROR"),
                                        ("tornado", "ERROR"), ("cfhdask", "INFO"))},
        "root": {"level": "WARNING", "handlers": ["file"]},
    }


@contextlib.contextmanager
def logging_to(path: str, verbose: int = 0, quiet: bool = False) -> Iterator[None]:
    """Log to the terminal and to ``path`` for the duration of a command.

    Parameters
    ----------
    path : str
        The log file (created on the first record).
    verbose : int
        ``-v`` count: 2 or more shows DEBUG and every library on the terminal.
    quiet : bool
        Only warnings and errors on the terminal.
    """
    level = logging.WARNING if quiet else (logging.DEBUG if verbose >= 2 else logging.INFO)
    root = logging.getLogger()
    terminal = logging.StreamHandler()
    terminal.setLevel(level)
    terminal.setFormatter(logging.Formatter(_TERMINAL_FORMAT, datefmt="%H:%M:%S"))
    terminal.addFilter(_Terminal(verbose >= 2))
    details = logging.FileHandler(path, delay=True)
    details.setLevel(logging.DEBUG)
    details.setFormatter(logging.Formatter(LOG_FORMAT))
    saved = (root.level, list(root.handlers), logging.getLogger("cfhdask").level)
    saved_env = os.environ.get(_WORKER_ENV)
    for h in saved[1]:
        root.removeHandler(h)
    root.addHandler(terminal)
    root.addHandler(details)
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    logging.getLogger("cfhdask").setLevel(logging.DEBUG)
    os.environ[_WORKER_ENV] = repr(_worker_logging(path))
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        if saved_env is None:
            os.environ.pop(_WORKER_ENV, None)
        else:
            os.environ[_WORKER_ENV] = saved_env
        for h in (terminal, details):
            root.removeHandler(h)
            h.close()
        for h in saved[1]:
            root.addHandler(h)
        root.setLevel(saved[0])
        logging.getLogger("cfhdask").setLevel(saved[2])
