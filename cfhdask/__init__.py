"""cfhdask: connectivity between functionally homotopic voxels (CFH) on Dask.

The public API mirrors the command line (``cfhdask --help``)::

    import cfhdask
    participants = cfhdask.simulate_cohort("sim/", n_patients=10, n_controls=10)
    store = cfhdask.ingest(["sim/sub-P01/func/sub-P01_task-rest_bold.nii.gz"], "cohort.zarr")
    cfh = cfhdask.compute_cfh("cohort.zarr")      # xarray.Dataset (subject, voxel)

Names are imported lazily so that ``import cfhdask`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from cfhdask._version import __version__

#: public name -> module that defines it
_API: dict[str, str] = {
    "CohortStore": "cfhdask.io.store",
    "open_store": "cfhdask.io.store",
    "ingest": "cfhdask.prep.ingest",
    "export_maps": "cfhdask.io.export",
    "simulate_cohort": "cfhdask.sim.cohort",
    "compute_cfh": "cfhdask.cfh.compute",
    "compute_vmhc": "cfhdask.cfh.vmhc",
    "compute_autonomy": "cfhdask.cfh.autonomy",
    "migrate_store": "cfhdask.io.store",
    "cfh_graph": "cfhdask.cfh.graph",
    "dask_client": "cfhdask.cluster",
    "group_inference": "cfhdask.stats.inference",
    "null_check": "cfhdask.stats.nullcheck",
    "table1": "cfhdask.clinical.table1",
    "cluster_correlations": "cfhdask.clinical.correlations",
    "prepare_series": "cfhdask.prep.pipeline",
    "DenoiseParams": "cfhdask.prep.pipeline",
    "discover_inputs": "cfhdask.prep.discover",
    "run_study": "cfhdask.study",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'cfhdask' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
