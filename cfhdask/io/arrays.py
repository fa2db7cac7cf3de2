"""Opening the arrays of a cohort store: numeric Zarr v3 arrays only, nothing unpickled.

A cohort store holds numeric arrays (float32, int32, int8) and JSON attributes;
cfhdask never reads pickles from it.  Zarr v3 has no pickle codec and a v3
group does not even see a Zarr v2 (``.zarray``) array, but a store from
elsewhere could still hold arrays of strings, objects or unknown codecs where
cfhdask expects numbers.  :func:`store_array` opens one array by name (reading
only its JSON metadata) and refuses, with a one-line error naming it, anything
that is not the numeric array expected, before a single chunk is decoded.
"""

from __future__ import annotations

import numpy as np
import zarr

from cfhdask.errors import CfhdaskInputError

__all__ = ["NUMERIC_KINDS", "store_array"]

#: NumPy dtype kinds a cohort store may hold: bool, signed, unsigned, float.
NUMERIC_KINDS = frozenset("biuf")


def store_array(group: zarr.Group, name: str, dtype=None, *, where: str) -> zarr.Array:
    """The numeric array ``name`` of ``group``, checked before any data is read.

    Parameters
    ----------
    group : zarr.Group
    name : str
        Array name in the group (``"bold"``, ``"cfh"``...).
    dtype : numpy dtype, optional
        The data type required (default: any numeric type).
    where : str
        The group, for messages (``"store s3://b/c.zarr: subjects/sub-01"``).

    Raises
    ------
    CfhdaskInputError
        No such Zarr v3 array, unreadable metadata (an unknown codec or data
        type), or a non-numeric or unexpected data type.
    """
    try:
        node = group[name]
    except KeyError:
        raise CfhdaskInputError(f"{where}: no Zarr v3 array {name!r}") from None
    except Exception as exc:  # metadata naming a codec or data type zarr does not know
        raise CfhdaskInputError(f"{where}/{name}: refused: unreadable array metadata "
                                f"({type(exc).__name__}: {exc})") from None
    if not isinstance(node, zarr.Array):
        raise CfhdaskInputError(f"{where}/{name}: is a group, not an array")
    got = np.dtype(node.dtype)
    if got.kind not in NUMERIC_KINDS or (dtype is not None and got != np.dtype(dtype)):
        want = np.dtype(dtype).name if dtype is not None else "numeric"
        raise CfhdaskInputError(
            f"{where}/{name}: refused: data type {got} (expected {want}); a cohort store "
            "holds numeric arrays only and nothing in it is unpickled")
    return node
