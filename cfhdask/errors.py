"""Exceptions raised by cfhdask.

Every error caused by what a user passed in (a file, an option, a table) is a
:class:`CfhdaskInputError`; the CLI prints its message on one line and exits
with a non-zero status.  Messages always name the offending file or field.
"""

from __future__ import annotations


class CfhdaskError(Exception):
    """Base class of all cfhdask errors."""


class CfhdaskInputError(CfhdaskError, ValueError):
    """Bad user input: a file, an option, a table column or a store.

    The message names the file or field at fault.
    """


class StoreVersionError(CfhdaskInputError):
    """A cohort store written by an incompatible version of cfhdask."""
