"""Private APIs of other packages, isolated here behind a version check.

The CFH block graph is built from :class:`dask._task_spec.Task` objects (the
task representation of dask >= 2024.12), which is not public API.  Everything
cfhdask uses of it is imported from this module only, so a dask release that
changes it breaks one import with a clear message rather than the engine.
The versions tested are pinned in ``pyproject.toml`` (``dask<2026.8``).
"""

from __future__ import annotations

from importlib.metadata import version

from cfhdask.errors import CfhdaskError

#: dask releases whose private task spec cfhdask was tested with (inclusive range).
DASK_TESTED = ("2025.1", "2026.7")

try:
    from dask._task_spec import Task, TaskRef
except ImportError as exc:  # pragma: no cover - only with an untested dask
    raise CfhdaskError(
        f"cfhdask needs dask's task spec (dask._task_spec.Task, TaskRef), missing in dask "
        f"{version('dask')}; install a dask between {DASK_TESTED[0]} and {DASK_TESTED[1]}"
    ) from exc

__all__ = ["DASK_TESTED", "Task", "TaskRef"]
