"""TLS to a remote scheduler (``tls://``): a :class:`distributed.Security` from the settings.

The CA certificate, client certificate and key come from ``cfhdask.cluster``
(``--tls-ca-file``, ``--tls-cert``, ``--tls-key``); when none is given, Dask's
own ``distributed.comm.tls.*`` configuration applies, as for any Dask client.
"""

from __future__ import annotations

import os

from distributed import Security

from cfhdask.errors import CfhdaskInputError
from cfhdask.settings import ClusterSettings

__all__ = ["client_security"]

#: Settings field -> (CLI option, distributed.Security keyword).
_FILES = {"tls_ca_file": ("--tls-ca-file", "tls_ca_file"),
          "tls_cert": ("--tls-cert", "tls_client_cert"),
          "tls_key": ("--tls-key", "tls_client_key")}


def _uses_tls(address: str | None) -> bool:
    return bool(address) and str(address).startswith("tls://")


def client_security(config: ClusterSettings, address: str | None) -> Security | None:
    """The client's :class:`distributed.Security`, or None for plain ``tcp://``.

    Parameters
    ----------
    config : ClusterSettings
        ``tls_ca_file``, ``tls_cert`` and ``tls_key`` (paths of PEM files).
    address : str, optional
        The scheduler's address (``tls://host:port``), when known.

    Raises
    ------
    CfhdaskInputError
        A missing file, or a ``tls://`` scheduler and no certificate anywhere.
    """
    given = {field: getattr(config, field) for field in _FILES if getattr(config, field)}
    for field, path in given.items():
        if not os.path.isfile(path):
            raise CfhdaskInputError(f"{_FILES[field][0]}: no such file: {path}")
    if given:
        return Security(require_encryption=True,
                        **{_FILES[f][1]: os.path.abspath(p) for f, p in given.items()})
    if not _uses_tls(address):
        return None
    security = Security()  # distributed.comm.tls.* of the Dask config, if any
    if not security.tls_ca_file:
        raise CfhdaskInputError(
            f"scheduler {address}: a tls:// scheduler needs --tls-ca-file and, when it "
            "checks clients, --tls-cert/--tls-key (or distributed.comm.tls.* in the Dask "
            "config)")
    return security
