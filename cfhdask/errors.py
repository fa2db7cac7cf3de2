"""Exceptions raised by cfhdask.

Every error caused by what a user passed in (a file, an option, a table) is a
:class:`CfhdaskInputError`; the CLI prints its message on one line and exits
with a non-zero status.  Messages always name the offending file or field.
"""

from __future__ import annotations

from cfhdask.secrets import redact


class CfhdaskError(Exception):
    """Base class of all cfhdask errors.

    Registered credentials (:mod:`cfhdask.secrets`) in the message are
    replaced by ``***``.
    """

    def __init__(self, *args):
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class CfhdaskInputError(CfhdaskError, ValueError):
    """Bad user input: a file, an option, a table column or a store.

    The message names the file or field at fault.
    """


class StoreVersionError(CfhdaskInputError):
    """A cohort store written by an incompatible version of cfhdask."""


class CfhdaskClusterError(CfhdaskError):
    """The Dask cluster cannot run the work: worker jobs refused, stuck or gone.

    The message says why (the batch system's reason, a job's last log line).
    """
