"""Atomic file writes: a file appears under its final name complete, or not at all.

One writer per kind of small file: :func:`atomic_write` (any writer callable),
:func:`write_text` and :func:`write_json` (with :func:`to_jsonable`, the one
JSON cleaner).  Files get the permissions a plain ``open()`` would give them
(``0o666`` less the umask), so lab mates can read what a run wrote.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["atomic_write", "to_jsonable", "write_json", "write_text"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` on a hidden temporary file beside ``path``, then rename it.

    The temporary name ends with the final file name, so writers that look at
    the extension (``.nii.gz``, ``.tsv``) behave the same.  On any error the
    temporary file is removed and the error re-raised; an existing ``path`` is
    left as it was.  The file ends with mode ``0o666 & ~umask``.
    """
    path = os.fspath(path)
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".tmp-{uuid.uuid4().hex[:12]}-{os.path.basename(path)}")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def to_jsonable(obj: Any) -> Any:
    """NumPy scalars/arrays, tuples, sets and paths as plain JSON values; NaN/Inf as null."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    return str(obj)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> None:
    """Write ``obj`` (cleaned by :func:`to_jsonable`) as a JSON file, atomically."""
    write_text(path, json.dumps(to_jsonable(obj), indent=indent) + "\n")
