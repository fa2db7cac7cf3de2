"""cfhdask configuration, in Dask's config system under ``cfhdask:``.

The defaults ship in ``cfhdask/cfhdask.yaml``.  As with dask-jobqueue, users
override them in ``~/.config/dask/cfhdask.yaml``, in a file named by
``$DASK_CONFIG``, or with ``DASK_CFHDASK__SECTION__KEY`` environment variables.
"""

from __future__ import annotations

import os
from typing import Any

import dask
import dask.config
import yaml

_FN = os.path.join(os.path.dirname(__file__), "cfhdask.yaml")

with open(_FN) as _f:
    _DEFAULTS = yaml.safe_load(_f)

dask.config.update_defaults(_DEFAULTS)
if os.environ.get("CFHDASK_WRITE_CONFIG"):
    dask.config.ensure_file(source=_FN)


def get(key: str, default: Any = None) -> Any:
    """Return ``cfhdask.<key>`` from Dask's config (e.g. ``get("cfh.block")``)."""
    return dask.config.get(f"cfhdask.{key}", default=default)
