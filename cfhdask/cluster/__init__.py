"""Dask clusters: the embedded LocalCluster, an existing scheduler, batch systems.

Every compute entry point of cfhdask takes the same ways to run:

* nothing given: an embedded :class:`distributed.LocalCluster` bound to
  localhost and sized to the machine, BLAS threads limited so that
  ``workers x threads x BLAS threads <= cores`` (:mod:`cfhdask.cluster.local`);
* ``scheduler`` (``tcp://host:8786``, or ``tls://`` with certificates,
  :mod:`cfhdask.cluster.tls`) or ``scheduler_file``: attach to a cluster that
  already runs (HPC, Kubernetes, cloud) and leave it running;
* ``cluster="slurm" | "pbs" | "kubernetes"``: start workers through
  dask-jobqueue or dask-kubernetes with the settings in ``cfhdask.yaml``
  (:mod:`cfhdask.cluster.batch`: jobs checked, waited for, replaced before
  their walltime, cancelled on exit and on SIGTERM).

When a :class:`distributed.Client` is already the default client (e.g. in a
notebook), it is used as it is.
"""

from cfhdask.cluster.batch import JobKeeper, jobqueue_kwargs, kubernetes_kwargs
from cfhdask.cluster.client import dask_client
from cfhdask.cluster.local import (
    available_cores,
    blas_env,
    local_layout,
    start_local_cluster,
    worker_launch_env,
)
from cfhdask.cluster.tls import client_security

__all__ = ["JobKeeper", "available_cores", "blas_env", "client_security", "dask_client",
           "jobqueue_kwargs", "kubernetes_kwargs", "local_layout", "start_local_cluster",
           "worker_launch_env"]
