"""The cohort store: one Zarr v3 group holding a whole cohort.

Layout (version 2; see the README, section *The cohort store*)::

    STORE/                      attrs: cfhdask_store_version, grid_shape, affine, mask, ...
      ijk        (voxel, axis)  int32
      xyz        (voxel, axis)  float32
      hemisphere (voxel)        int8
      counterpart/              attrs: fingerprint, reference, params, complete (last)
        index    (voxel)        int32    the group counterpart of every voxel (-1: none)
        summed_r (voxel)        float32  sum over the reference subjects of r at it
      subjects/<subject>/       attrs: subject, source, tr, ..., ingest_complete (last),
                                       <metric>_complete, <metric>_params per metric
        bold        (voxel, time) float32, chunks (voxel_chunk, n_time)
        cfh, cfh_r, cfh_counterpart                     group-counterpart CFH
        cfh_subject, cfh_subject_r, cfh_subject_counterpart   per-subject maximum
        vmhc, vmhc_r                                    voxel-mirrored homotopic connectivity
        ai                                              autonomy index

Voxels are ordered left hemisphere, right hemisphere, midline (C order inside
each block), so each hemisphere is a contiguous slice.  Arrays are written
chunk-aligned (one Dask block per Zarr chunk) so parallel writers never share
a chunk.

Nothing half-written is readable, by cfhdask or by any Zarr reader
(``xr.open_datatree(STORE, engine="zarr")`` included).  A Zarr v3 node exists
for readers once its ``zarr.json`` exists, so every node's metadata document
is written **last** (one atomic object write, local or object store):

* an array's chunks are written first (by the workers, in parallel), its
  ``zarr.json`` once they all are: an array is seen complete or not at all;
* a new subject's group document, holding its attributes and
  ``ingest_complete``, is written after its ``bold`` array: the subject
  appears complete, in one write;
* a metric's arrays appear one after the other, each complete, and its
  ``<metric>_complete`` flag after them (:meth:`CohortStore.datatree` shows a
  metric only with its flag);
* a node is removed metadata first, then its chunks.

A write interrupted at any point (kill -9 of a worker or of the client) leaves
at most chunks without metadata, which no reader lists; the next writer
(:meth:`CohortStore.cleanup_incomplete`, or a rewrite of that node) removes
them.  Finished subjects and maps are never touched.

Version-1 stores (before the group counterpart) open read-only: their
per-subject CFH is read as ``cfh_subject``.  Writing to one needs
:func:`migrate_store` (``cfhdask migrate STORE``) first, which renames those
arrays in place and computes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as _dt
import functools
import json
import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from dask.array.core import normalize_chunks
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from zarr.codecs import BloscCodec, BloscShuffle
from zarr.storage import LocalStore, MemoryStore, StorePath

from cfhdask._compat import Task
from cfhdask._version import __version__
from cfhdask.errors import CfhdaskError, CfhdaskInputError, StoreVersionError
from cfhdask.grid import voxel_table
from cfhdask.io.arrays import store_array
from cfhdask.io.atomic import to_jsonable
from cfhdask.io.urls import check_writable
from cfhdask.settings import settings

try:  # zarr's stores are asynchronous: zarr's own bridge to call them from here
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync as _zarr_sync
except ImportError as exc:  # pragma: no cover - only with an untested zarr
    raise CfhdaskError(f"cfhdask needs zarr.core.sync and zarr.core.buffer (zarr 3), missing "
                       f"in zarr {zarr.__version__}") from exc

log = logging.getLogger(__name__)

#: Layout version written into every new store.
STORE_VERSION = 2
#: Layout versions this cfhdask opens (version 1 read-only, see :func:`migrate_store`).
READ_VERSIONS = (1, 2)
SUBJECTS = "subjects"
COUNTERPART = "counterpart"
INGEST_FLAG = "ingest_complete"
#: Prefix of the group a replacement subject is written to (``--overwrite``) until it
#: is complete; subject ids never start with ``__``.
STAGED_PREFIX = "__new__"
STAGED_FLAG = "staged_complete"

#: Per-subject arrays of every metric; the first is the map that group analyses read.
METRICS: dict[str, tuple[str, ...]] = {
    "cfh": ("cfh", "cfh_r", "cfh_counterpart"),
    "cfh_subject": ("cfh_subject", "cfh_subject_r", "cfh_subject_counterpart"),
    "vmhc": ("vmhc", "vmhc_r"),
    "ai": ("ai",),
}
#: What each metric is, in words (CLI help, errors, report).
METRIC_LABELS: dict[str, str] = {
    "cfh": "CFH (group-defined counterpart)",
    "cfh_subject": "CFH (per-subject maximum)",
    "vmhc": "VMHC",
    "ai": "autonomy index",
}
#: The command that computes each metric.
METRIC_COMMANDS: dict[str, str] = {
    "cfh": "cfhdask cfh STORE", "cfh_subject": "cfhdask cfh STORE --counterpart subject",
    "vmhc": "cfhdask vmhc STORE", "ai": "cfhdask autonomy STORE",
}
#: In a version-1 store: the per-subject maximum CFH under its old names.
_V1_ARRAYS = {"cfh_subject": "cfh", "cfh_subject_r": "r_max",
              "cfh_subject_counterpart": "counterpart"}
_V1_FLAGS = {"cfh_subject": "cfh_complete"}
_V1_PARAMS = {"cfh_subject": "cfh_params"}
#: What :meth:`CohortStore.subjects` accepts: "ingested" or a metric.
Stage = str
#: The metadata document of a Zarr v3 node: written last, removed first.
META = "zarr.json"
#: Root attributes every cohort store has (written last when a store is created).
ROOT_ATTRS = ("grid_shape", "affine", "n_left", "n_right", "n_midline")


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def _key_url(url: str, *parts: str) -> str:
    """The URL of a key of the store at ``url`` (for messages)."""
    return "/".join([str(url).rstrip("/"), *parts])


async def _remove_node_async(store, path: str) -> None:
    """Delete a Zarr node, its metadata first: readers stop seeing it before a chunk goes."""
    if not path.strip("/"):
        raise ValueError("refusing to remove the root of a store")
    await store.delete(_join(path, META))
    await store.delete_dir(path)


def _remove_node(store, path: str) -> None:
    """:func:`_remove_node_async`, from synchronous code."""
    _zarr_sync(_remove_node_async(store, path))


def _count_keys(store, prefix: str) -> int:
    """Keys stored under ``prefix`` (one listing)."""
    async def keys() -> int:
        return sum([1 async for _ in store.list_prefix(prefix)])

    return _zarr_sync(keys())


def _stored_chunks_expected(values: np.ndarray, rows: int) -> int:
    """Chunks of ``rows`` voxels a write of ``values`` stores: all but those left at the
    fill value, NaN (Zarr does not store an empty chunk)."""
    return sum(bool(np.isfinite(values[a:a + rows]).any()) for a in range(0, len(values), rows))


def _children(store, path: str) -> list[str]:
    """Names directly under ``path`` in a Zarr store (nodes, and folders without metadata)."""
    async def names() -> list[str]:
        return [k async for k in store.list_dir(path)]

    return _zarr_sync(names())


#: Metadata documents read at once by :func:`_read_documents` (object stores take many).
DOCUMENT_READS_AT_ONCE = 64


def _read_documents(store, keys: Sequence[str]) -> list[bytes | None]:
    """The bytes of many small keys (metadata documents), read concurrently in one call
    (None: absent); the client's cost per subject is one parse, not one round trip."""
    proto = default_buffer_prototype()

    async def read_all() -> list[bytes | None]:
        limit = asyncio.Semaphore(DOCUMENT_READS_AT_ONCE)

        async def one(key: str) -> bytes | None:
            async with limit:
                buf = await store.get(key, prototype=proto)
            return None if buf is None else buf.to_bytes()

        return list(await asyncio.gather(*(one(k) for k in keys)))

    return _zarr_sync(read_all()) if keys else []


def _unflagged_document(doc: bytes, flag: str) -> bytes | None:
    """A group document with ``flag`` set to false (None: the flag is not there)."""
    meta = json.loads(doc)
    if flag not in (meta.get("attributes") or {}):
        return None
    meta["attributes"][flag] = False
    return json.dumps(meta, indent=2).encode()


def _hide_and_remove(store, jobs: Sequence[tuple[str, bytes | None, Sequence[str]]]) -> None:
    """For each ``(group path, new group document or None, node paths)``, concurrently:
    write the document, then remove the nodes (each its metadata first)."""
    proto = default_buffer_prototype()

    async def run_all() -> None:
        limit = asyncio.Semaphore(DOCUMENT_READS_AT_ONCE)

        async def one(path: str, doc: bytes | None, nodes: Sequence[str]) -> None:
            async with limit:
                if doc is not None:
                    await store.set(_join(path, META), proto.buffer.from_bytes(doc))
                for node in nodes:
                    await _remove_node_async(store, node)

        await asyncio.gather(*(one(*job) for job in jobs))

    if jobs:
        _zarr_sync(run_all())


def _group_attributes(doc: bytes | None) -> dict | None:
    """The attributes of a Zarr v3 group document (None: absent, unreadable or an array)."""
    if doc is None:
        return None
    try:
        meta = json.loads(doc)
    except ValueError:
        return None
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return None
    return dict(meta.get("attributes") or {})


@functools.lru_cache(maxsize=64)
def _array_metadata(shape: tuple, chunks: tuple, dtype: str, dims: tuple, fill: str):
    """Zarr v3 metadata of a new array (the same for every subject: built once)."""
    return zarr.create_array(MemoryStore(), shape=shape, chunks=chunks, dtype=dtype,
                             dimension_names=list(dims), fill_value=json.loads(fill),
                             compressors=_compressors(np.dtype(dtype))).metadata


def _new_subject_attrs(subject: str, attrs: dict) -> dict:
    """A new subject's attributes: no completion flag (written at publication)."""
    attrs = dict(attrs)
    attrs.pop(INGEST_FLAG, None)
    for metric in METRICS:
        attrs.pop(f"{metric}_complete", None)
    attrs.setdefault("subject", subject)
    attrs.setdefault("ingested", now_iso())
    return attrs


def _finish_on_worker(store: CohortStore, subject: str, attrs: dict, bold: zarr.Array,
                      written: Any) -> str:
    """On a worker, after the chunk writes: publish a new subject (see
    :meth:`CohortStore.finish_graph`)."""
    store._publish_subject(subject, subject, attrs, bold, again=True)
    return subject


def _read_map_block(url: str, options: str, path: str, start: int, stop: int) -> np.ndarray:
    """On a worker: voxels ``start:stop`` of one subject's map array, as a (1, n) row."""
    arr = zarr.open_array(store=url, path=path, mode="r", zarr_format=3,
                          storage_options=json.loads(options) or None)
    return np.asarray(arr[start:stop])[None, :]


@contextlib.contextmanager
def _quiet_listing():
    """Zarr warns about folders without metadata (nodes being written): expected here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".* not recognized as a component")
        yield


def _unpublished_array(store, path: str, shape, chunks, dtype, dims, fill=None) -> zarr.Array:
    """An array whose chunks can be written (and pickled to workers) while its metadata
    is not: no reader sees it until :func:`_publish`."""
    fill_json = json.dumps(None if fill is None else float(fill)
                           if np.dtype(dtype).kind == "f" else int(fill))
    meta = _array_metadata(tuple(int(n) for n in shape), tuple(int(n) for n in chunks),
                           np.dtype(dtype).str, tuple(dims), fill_json)
    meta = dataclasses.replace(meta, attributes={})  # zarr updates attributes in place
    return zarr.Array(zarr.AsyncArray(meta, StorePath(store, path)))


def _publish(arr: zarr.Array) -> None:
    """Write an array's ``zarr.json`` (after its chunks): readers see it from now on."""
    arr.update_attributes({})


def _write_array(group: zarr.Group, name: str, values, *, chunks=None,
                 dims: Sequence[str] = ("voxel",), fill=None) -> None:
    """Replace ``group[name]`` by ``values``, whole: the old node goes metadata first, the
    new one's metadata is written after its chunks."""
    values = np.asarray(values)
    path = _join(group.path, name)
    _remove_node(group.store, path)
    arr = _unpublished_array(group.store, path, values.shape, chunks or values.shape,
                             values.dtype, dims, fill)
    arr[...] = values
    _publish(arr)


def _move_node(store, src: str, dst: str) -> None:
    """Move a node to a free ``dst``: one rename on a local store; elsewhere its chunks are
    copied first and its metadata documents last (arrays before their group)."""
    if isinstance(store, LocalStore):
        os.rename(store.root / src, store.root / dst)
        return

    async def keys() -> list[str]:
        return [k async for k in store.list_prefix(src + "/")]

    order = sorted(_zarr_sync(keys()), key=lambda k: (k.endswith(META), -k.count("/")))
    for key in order:
        buf = _zarr_sync(store.get(key, prototype=default_buffer_prototype()))
        _zarr_sync(store.set(dst + key[len(src):], buf))
    _remove_node(store, src)


def metric_of(var: str) -> str:
    """The metric an array name belongs to (``"cfh_r"`` -> ``"cfh"``)."""
    for metric, names in METRICS.items():
        if var in names:
            return metric
    known = ", ".join(n for names in METRICS.values() for n in names)
    raise ValueError(f"unknown per-subject map {var!r} (known: {known})")


def _dtype(var: str):
    return np.int32 if var.endswith("counterpart") else np.float32


def _fill(var: str):
    return -1 if var.endswith("counterpart") else np.float32("nan")


def now_iso() -> str:
    """The current UTC time in ISO 8601 (seconds)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def preprocessing_setting(pre: dict | None) -> dict:
    """The part of a subject's ``preprocessing`` record that must agree across a store.

    The pipeline and its parameters (without the per-run TR override), not
    what varies per run (regressors found, TR source, notes).
    """
    pre = dict(pre or {})
    out: dict[str, Any] = {"pipeline": pre.get("pipeline", "none")}
    if isinstance(pre.get("parameters"), dict):
        out["parameters"] = {k: v for k, v in pre["parameters"].items() if k != "tr"}
    else:
        out["drop_volumes"] = pre.get("drop_volumes")
    return to_jsonable(out)


def describe_setting(setting: dict) -> str:
    """One line of a :func:`preprocessing_setting`: ``pipeline (key value, ...)``."""
    params = setting.get("parameters") or {k: v for k, v in setting.items() if k != "pipeline"}
    inner = ", ".join(f"{k} {v}" for k, v in params.items())
    return f"{setting.get('pipeline')} ({inner})" if inner else str(setting.get("pipeline"))


def settings_differ(a: dict, b: dict) -> str:
    """The keys where two preprocessing settings differ, as ``key: A vs B``."""
    if a.get("pipeline") != b.get("pipeline"):
        return f"{describe_setting(a)} vs {describe_setting(b)}"
    pa, pb = a.get("parameters") or a, b.get("parameters") or b
    keys = sorted(set(pa) | set(pb), key=str)
    return "; ".join(f"{k}: {pa.get(k)} vs {pb.get(k)}" for k in keys if pa.get(k) != pb.get(k))


def _compressors(dtype) -> list:
    level = settings().store.compressor_level
    return [BloscCodec(cname="zstd", clevel=level, shuffle=BloscShuffle.shuffle,
                       typesize=np.dtype(dtype).itemsize)]


class CohortStore:
    """A cohort store opened for reading (``"r"``) or writing (``"r+"``).

    Use :meth:`create` for a new store and :meth:`open` (or :func:`open_store`)
    for an existing one.

    Attributes
    ----------
    url : str
        Path or fsspec URL of the store.
    grid_shape : tuple of int
        Shape (nx, ny, nz) of the data grid.
    affine : ndarray of shape (4, 4)
        Voxel-to-MNI affine of the grid.
    n_voxels, n_left, n_right, n_midline : int
        Voxel counts (all, per hemisphere, midline).
    voxel_chunk : int
        Voxels per Zarr chunk of the per-subject arrays.
    """

    def __init__(self, url: str, group: zarr.Group, storage_options: dict | None = None):
        self.url = str(url)
        self.storage_options = dict(storage_options or {})
        self._root = group
        attrs = dict(group.attrs)
        missing = [k for k in ROOT_ATTRS if k not in attrs]
        if missing:
            raise CfhdaskInputError(
                f"store {url}: root attributes {', '.join(missing)} missing from "
                f"{_key_url(url, META)}: a store still being created, or whose creation was "
                "interrupted")
        self.grid_shape: tuple[int, int, int] = tuple(int(s) for s in attrs["grid_shape"])
        self.affine: np.ndarray = np.asarray(attrs["affine"], dtype=np.float64)
        self.n_left = int(attrs["n_left"])
        self.n_right = int(attrs["n_right"])
        self.n_midline = int(attrs["n_midline"])
        self.n_voxels = self.n_left + self.n_right + self.n_midline
        self.voxel_chunk = int(attrs.get("voxel_chunk", max(1, self.n_voxels)))
        self.layout_version = int(attrs.get("cfhdask_store_version", STORE_VERSION))
        self._where = f"store {self.url}"
        self._ijk: np.ndarray | None = None
        self._xyz: np.ndarray | None = None
        self._hemisphere: np.ndarray | None = None
        #: Subjects begun here, not yet published: group name -> (attributes, bold array).
        self._pending: dict[str, tuple[dict, zarr.Array]] = {}
        self._subjects_node: zarr.Group | None = None

    def __reduce__(self):
        """Pickled as its URL, mode and options: a worker reopens the store itself
        (without writing a probe: the client checked that the store can be written)."""
        return (_reopen, (self.url, "r+" if self.writable else "r", self.storage_options))

    # ------------------------------------------------------------------ open/create
    @classmethod
    def create(
        cls,
        url: str,
        *,
        grid_shape: Sequence[int],
        affine: np.ndarray,
        mask: np.ndarray,
        mask_info: dict,
        voxel_chunk: int | None = None,
        storage_options: dict | None = None,
    ) -> CohortStore:
        """Create a new, empty cohort store (no subjects yet).

        Parameters
        ----------
        url : str
            Directory or fsspec URL; must not hold a Zarr group already.
        grid_shape : sequence of 3 int
            Shape of the data grid.
        affine : ndarray of shape (4, 4)
            Voxel-to-MNI affine.
        mask : ndarray of bool, shape ``grid_shape``
            The analysis mask (non-empty).
        mask_info : dict
            Provenance of the mask (e.g. ``{"source": "gm", "gm_threshold": 0.2}``).
        voxel_chunk : int, optional
            Voxels per Zarr chunk (default ``cfhdask.store.voxel-chunk``).
        storage_options : dict, optional
            fsspec options (credentials, endpoint) for remote URLs.

        Returns
        -------
        CohortStore
            Opened in ``"r+"`` mode.
        """
        mask = np.asarray(mask, dtype=bool)
        grid_shape = tuple(int(s) for s in grid_shape)
        if mask.shape != grid_shape:
            raise CfhdaskInputError(
                f"mask shape {mask.shape} differs from the grid shape {grid_shape}")
        table = voxel_table(mask, affine)
        if table.n_voxels == 0:
            raise CfhdaskInputError(f"mask {mask_info.get('source', '')!s}: no voxel in the mask")
        chunk = int(voxel_chunk or settings().store.voxel_chunk)
        chunk = max(1, min(chunk, table.n_voxels))
        try:
            root = zarr.open_group(store=url, mode="w-", zarr_format=3,
                                   storage_options=storage_options or None)
        except (FileExistsError, zarr.errors.ContainsGroupError,
                zarr.errors.ContainsArrayError) as exc:
            raise CfhdaskInputError(f"store {url}: already exists") from exc
        except Exception as exc:  # bad URL/options, unreachable endpoint, no bucket...
            raise CfhdaskInputError(f"store {url}: cannot create: {exc}") from exc
        for name, values, dims in (
            ("ijk", table.ijk.astype(np.int32), ["voxel", "axis"]),
            ("xyz", table.xyz.astype(np.float32), ["voxel", "axis"]),
            ("hemisphere", table.hemisphere.astype(np.int8), ["voxel"]),
        ):
            _write_array(root, name, values, dims=dims)
        root.require_group(SUBJECTS)  # the root attributes, last, make it a cohort store
        info = dict(mask_info)
        info["n_voxels"] = int(table.n_voxels)
        root.attrs.update(to_jsonable({
            "cfhdask_store_version": STORE_VERSION,
            "cfhdask_version": __version__,
            "created": now_iso(),
            "grid_shape": list(grid_shape),
            "affine": np.asarray(affine, dtype=np.float64).tolist(),
            "mask": info,
            "n_left": table.n_left,
            "n_right": table.n_right,
            "n_midline": table.n_midline,
            "voxel_chunk": chunk,
            "history": [],
        }))
        log.info("Created cohort store %s: %d voxels (%d left, %d right, %d midline)",
                 url, table.n_voxels, table.n_left, table.n_right, table.n_midline)
        return cls(url, root, storage_options)

    @classmethod
    def open(cls, url: str, mode: Literal["r", "r+"] = "r",
             storage_options: dict | None = None, *, probe: bool = True) -> CohortStore:
        """Open an existing cohort store.

        Parameters
        ----------
        url : str
            Directory or fsspec URL of the store.
        mode : {"r", "r+"}
            Read only, or read and write.
        storage_options : dict, optional
            fsspec options for remote URLs.
        probe : bool
            In ``"r+"`` mode, write and remove a probe file first, so that a
            store that cannot be written is an error before any compute.

        Raises
        ------
        CfhdaskInputError
            No (complete) cohort store at ``url``, or, in ``"r+"`` mode, one
            that cannot be written (permissions, read-only or full file
            system, denied bucket access).
        StoreVersionError
            The store was written by an incompatible cfhdask version.
        """
        if mode not in ("r", "r+"):
            raise CfhdaskInputError(f"store {url}: mode must be 'r' or 'r+', not {mode!r}")
        try:
            root = zarr.open_group(store=url, mode=mode, zarr_format=3,
                                   storage_options=storage_options or None,
                                   use_consolidated=False)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError) as exc:
            raise CfhdaskInputError(f"store {url}: no cohort store there") from exc
        except Exception as exc:  # bad URL/options, unreachable endpoint (botocore errors)
            raise CfhdaskInputError(f"store {url}: cannot open: {exc}") from exc
        attrs = dict(root.attrs)
        version = attrs.get("cfhdask_store_version")
        if version is None:
            raise CfhdaskInputError(f"store {url}: not a cfhdask cohort store, or one still "
                                    "being created (no cfhdask_store_version attribute in "
                                    f"{_key_url(url, META)})")
        if version not in READ_VERSIONS:
            raise StoreVersionError(
                f"store {url}: layout version {version!r} (written by cfhdask "
                f"{attrs.get('cfhdask_version', '?')}) is not supported by cfhdask "
                f"{__version__}, which reads versions {', '.join(map(str, READ_VERSIONS))}")
        if version != STORE_VERSION and mode != "r":
            raise StoreVersionError(
                f"store {url}: layout version {version} can only be read by cfhdask "
                f"{__version__}; run `cfhdask migrate {url}` to upgrade it to version "
                f"{STORE_VERSION} in place (its per-subject CFH maps become cfh_subject; "
                "nothing is recomputed)")
        if SUBJECTS not in root:
            raise CfhdaskInputError(f"store {url}: {_key_url(url, SUBJECTS, META)} is missing "
                                    "(the group of the subjects): not a complete cohort store")
        if version != STORE_VERSION:
            log.info("store %s: layout version %s, read-only (its per-subject CFH is read as "
                     "cfh_subject)", url, version)
        store = cls(url, root, storage_options)
        if mode == "r+" and probe:
            check_writable(str(url), storage_options, what="store")
        return store

    # ------------------------------------------------------------------ voxel table
    @property
    def attrs(self) -> dict:
        """The root attributes (a copy)."""
        return dict(self._root.attrs)

    @property
    def left(self) -> slice:
        """Voxel slice of the left hemisphere."""
        return slice(0, self.n_left)

    @property
    def right(self) -> slice:
        """Voxel slice of the right hemisphere."""
        return slice(self.n_left, self.n_left + self.n_right)

    @property
    def midline(self) -> slice:
        """Voxel slice of the midline voxels."""
        return slice(self.n_left + self.n_right, self.n_voxels)

    @property
    def ijk(self) -> np.ndarray:
        """Voxel indices on the grid, shape (n_voxels, 3), int32."""
        if self._ijk is None:
            self._ijk = np.asarray(store_array(self._root, "ijk", np.int32, where=self._where)[...])
        return self._ijk

    @property
    def xyz(self) -> np.ndarray:
        """MNI coordinates (mm) of the voxels, shape (n_voxels, 3), float32."""
        if self._xyz is None:
            self._xyz = np.asarray(store_array(self._root, "xyz", np.float32, where=self._where)[...])
        return self._xyz

    @property
    def hemisphere(self) -> np.ndarray:
        """Hemisphere of each voxel: -1 left, +1 right, 0 midline (int8)."""
        if self._hemisphere is None:
            self._hemisphere = np.asarray(
                store_array(self._root, "hemisphere", np.int8, where=self._where)[...])
        return self._hemisphere

    @property
    def mask(self) -> np.ndarray:
        """The analysis mask on the grid (bool, ``grid_shape``)."""
        out = np.zeros(self.grid_shape, dtype=bool)
        ijk = self.ijk
        out[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = True
        return out

    def to_volume(self, values, fill: float = 0.0) -> np.ndarray:
        """Scatter per-voxel values onto the grid.

        Parameters
        ----------
        values : array of shape (n_voxels,) or (n, n_voxels)
            Values in store voxel order (NumPy or Dask).
        fill : float
            Value outside the mask.

        Returns
        -------
        ndarray
            ``grid_shape`` for 1-D input, ``grid_shape + (n,)`` for 2-D input
            (the volume axis last, as in 4D NIfTI).
        """
        values = np.asarray(values)
        if values.shape[-1] != self.n_voxels:
            raise ValueError(f"expected {self.n_voxels} voxels on the last axis, "
                             f"got shape {values.shape}")
        dtype = np.result_type(values.dtype, fill)
        i, j, k = self.ijk.T
        if values.ndim == 1:
            out = np.full(self.grid_shape, fill, dtype=dtype)
            out[i, j, k] = values
            return out
        if values.ndim == 2:
            out = np.full((*self.grid_shape, values.shape[0]), fill, dtype=dtype)
            out[i, j, k, :] = values.T
            return out
        raise ValueError(f"values must be 1-D or 2-D, got shape {values.shape}")

    # ------------------------------------------------------------------ subjects
    def _subjects_group(self) -> zarr.Group:
        if self._subjects_node is None:  # one metadata read per store object, not per call
            self._subjects_node = (self._root.require_group(SUBJECTS) if self.writable
                                   else self._root[SUBJECTS])
        return self._subjects_node

    @property
    def writable(self) -> bool:
        """Whether the store was opened for writing."""
        return not self._root.read_only

    def _require_writable(self) -> None:
        if not self.writable:
            raise CfhdaskInputError(f"store {self.url}: opened read-only")

    def _all_subject_groups(self) -> dict[str, zarr.Group]:
        if SUBJECTS not in self._root:
            return {}
        with _quiet_listing():
            return dict(self._root[SUBJECTS].groups())

    def _unpublished_subjects(self) -> list[str]:
        """Subject folders without group metadata: writes not finished (invisible)."""
        if SUBJECTS not in self._root:
            return []
        grp = self._root[SUBJECTS]
        names = {n for n in _children(grp.store, grp.path)
                 if n != META and not n.endswith(".partial")}
        return sorted(names - set(self._all_subject_groups()))

    def _subject_path(self, name: str) -> str:
        return _join(self._subjects_group().path, name)

    def _flag(self, metric: str) -> str:
        if self.layout_version == 1:
            return _V1_FLAGS.get(metric, f"{metric}_unavailable_in_v1")
        return f"{metric}_complete"

    def _array_name(self, var: str) -> str:
        return _V1_ARRAYS.get(var, var) if self.layout_version == 1 else var

    def _check_stage(self, stage: str) -> None:
        if stage != "ingested" and stage not in METRICS:
            raise ValueError(f"stage must be 'ingested' or one of {', '.join(METRICS)}, "
                             f"not {stage!r}")

    def subjects(self, stage: Stage = "ingested") -> list[str]:
        """Complete subjects, sorted.

        Parameters
        ----------
        stage : {"ingested", "cfh", "cfh_subject", "vmhc", "ai"}
            ``"ingested"``: time series written completely; a metric: that
            metric's maps written completely too.
        """
        self._check_stage(stage)
        out = []
        for name, grp in self._all_subject_groups().items():
            if name.startswith(STAGED_PREFIX):
                continue
            attrs = grp.attrs
            if attrs.get(INGEST_FLAG) is not True:
                continue
            if stage != "ingested" and attrs.get(self._flag(stage)) is not True:
                continue
            out.append(name)
        return sorted(out)

    def metric_params(self, subject: str, metric: str) -> dict:
        """The parameters a subject's maps of ``metric`` were computed with."""
        key = _V1_PARAMS.get(metric, f"{metric}_params") if self.layout_version == 1 \
            else f"{metric}_params"
        return dict(self._group(subject, metric).attrs.get(key) or {})

    def missing_metric(self, metric: str, option: str = "--metric") -> str:
        """A one-line message: ``metric`` has not been computed here, and how to compute it."""
        label = METRIC_LABELS.get(metric, metric)
        msg = f"{option} {metric}: no subject of store {self.url} has {label} maps"
        if self.layout_version == 1 and metric != "cfh_subject":
            return (msg + f" (a version-1 store holds only cfh_subject; run `cfhdask migrate "
                    f"{self.url}`, then `{METRIC_COMMANDS[metric].replace('STORE', self.url)}`)")
        return msg + f" (run `{METRIC_COMMANDS.get(metric, 'cfhdask cfh STORE').replace('STORE', self.url)}`)"

    def incomplete_subjects(self) -> list[str]:
        """Subjects whose ingest never finished (invisible to readers): folders of
        chunks without group metadata, and groups without ``ingest_complete``
        (as earlier cfhdask versions left an interrupted ingest)."""
        unflagged = [name for name, grp in self._all_subject_groups().items()
                     if grp.attrs.get(INGEST_FLAG) is not True]
        return sorted({*unflagged, *self._unpublished_subjects()})

    @staticmethod
    def _is_subject_name(subject: str) -> bool:
        return bool(subject) and "/" not in subject and subject not in (".", "..")

    def _require_complete(self, subject: str, attrs, stage: Stage) -> None:
        """``attrs`` (a subject's group attributes, None: no group) are of a subject
        complete for ``stage``, or a one-line error naming it."""
        ok = attrs is not None and attrs.get(INGEST_FLAG) is True and (
            stage == "ingested" or attrs.get(self._flag(stage)) is True)
        if not ok:
            what = "ingested" if stage == "ingested" else f"with {stage} results"
            raise CfhdaskInputError(f"store {self.url}: no subject {subject!r} {what}")

    def _group(self, subject: str, stage: Stage = "ingested") -> zarr.Group:
        self._check_stage(stage)
        grp = None
        if self._is_subject_name(subject):
            try:  # one metadata read (the subject's group document), not one per level
                node = self._root[_join(SUBJECTS, subject)]
            except KeyError:
                node = None
            grp = node if isinstance(node, zarr.Group) else None
        self._require_complete(subject, None if grp is None else grp.attrs, stage)
        return grp

    def _subject_key(self, subject: str, *parts: str) -> str:
        return _join(self._root.path, SUBJECTS, subject, *parts)

    def _subject_documents(self, subjects: Sequence[str],
                           *parts: str) -> dict[str, bytes | None]:
        """The ``zarr.json`` of each subject's group (or of ``parts`` under it), all read
        at once (None: absent)."""
        names = [s for s in dict.fromkeys(subjects) if self._is_subject_name(s)]
        docs = _read_documents(self._root.store,
                               [self._subject_key(s, *parts, META) for s in names])
        return dict(zip(names, docs, strict=True))

    def _complete_attrs(self, subjects: Sequence[str], stage: Stage = "ingested",
                        docs: dict[str, bytes | None] | None = None) -> dict[str, dict]:
        """Attributes of many subjects complete for ``stage``, their group documents read
        at once (``docs``: already read); an error names the first that is not."""
        self._check_stage(stage)
        docs = self._subject_documents(subjects) if docs is None else docs
        out = {}
        for s in subjects:
            attrs = _group_attributes(docs.get(s))
            self._require_complete(s, attrs, stage)
            out[s] = attrs
        return out

    def subject_attrs(self, subject: str) -> dict:
        """Attributes of a complete subject (source, tr, n_volumes, provenance...)."""
        return dict(self._group(subject).attrs)

    def subjects_attrs(self, subjects: Sequence[str]) -> dict[str, dict]:
        """:meth:`subject_attrs` of many subjects, their documents read at once.

        Returns
        -------
        dict subject -> dict
            In the order of ``subjects``.

        Raises
        ------
        CfhdaskInputError
            Naming the first subject that is not ingested completely.
        """
        return self._complete_attrs(list(subjects))

    def bold(self, subject: str) -> da.Array:
        """The masked time series of a subject, lazily.

        Returns
        -------
        dask.array.Array of shape (n_voxels, n_time), float32
            Chunked like the Zarr array: (voxel_chunk, n_time).
        """
        return da.from_zarr(store_array(self._group(subject), "bold", np.float32,
                                        where=f"{self._where}: subjects/{subject}"))

    def _staged(self, subject: str) -> str:
        return STAGED_PREFIX + subject

    def begin_subject(self, subject: str, n_time: int, attrs: dict) -> zarr.Array:
        """Start writing a subject: its ``bold`` array, unpublished (no reader sees it).

        Nothing of the subject is visible until :meth:`finish_subject`, called
        on this same object, writes the ``bold`` array's metadata and then the
        subject's group document (its attributes and ``ingest_complete``, in
        one write).  A complete subject of that name is kept: the replacement
        is written to a staged group and swapped in by :meth:`finish_subject`
        only once it is complete, so readers see the old subject until then
        (and keep it if the replacement fails, :meth:`abort_subject`).  What an
        interrupted write of that name left is removed first.  Use
        :meth:`write_subject` unless you schedule the writes yourself (as
        ingest does).

        Returns
        -------
        zarr.Array
            The ``bold`` array (n_voxels, n_time), chunks (voxel_chunk, n_time),
            picklable: workers write its chunks.
        """
        self._require_writable()
        subjects = self._subjects_group()
        name = subject
        if subject in subjects and subjects[subject].attrs.get(INGEST_FLAG) is True:
            name = self._staged(subject)
        _remove_node(subjects.store, self._subject_path(name))
        attrs = _new_subject_attrs(subject, attrs)
        bold = _unpublished_array(
            subjects.store, _join(self._subject_path(name), "bold"),
            (self.n_voxels, int(n_time)), (self.voxel_chunk, int(n_time)), np.float32,
            ("voxel", "time"), np.float32("nan"))
        self._pending[name] = (attrs, bold)
        return bold

    def bold_store_graph(self, bold, target: zarr.Array):
        """A lazy write of ``bold`` into ``target``, chunk-aligned.

        ``bold`` is rechunked to the Zarr chunks (voxel_chunk, n_time) so that
        every Dask block writes exactly one Zarr chunk.

        Returns
        -------
        dask.delayed.Delayed
        """
        arr = bold if isinstance(bold, da.Array) else da.from_array(np.asarray(bold))
        if arr.shape != target.shape:
            raise ValueError(f"bold has shape {arr.shape}, the store expects {target.shape}")
        arr = arr.astype(np.float32).rechunk(target.chunks)
        return da.store(arr, target, lock=False, compute=False)

    def finish_subject(self, subject: str, extra_attrs: dict | None = None) -> None:
        """Publish a subject whose chunks were written after :meth:`begin_subject`.

        The ``bold`` metadata is written, then the group document with the
        attributes and ``ingest_complete`` (one write: the subject appears
        complete).  A staged replacement is published under its staged name
        (flagged ``staged_complete``), then swapped for the old subject.
        """
        name, attrs, bold = self._take_pending(subject)
        self._publish_subject(subject, name, {**attrs, **dict(extra_attrs or {})}, bold)

    def finish_graph(self, subject: str, written: Any) -> Any:
        """:meth:`finish_subject` as a task run by a worker once ``written`` (the subject's
        chunk writes, :meth:`bold_store_graph`) is done: the client writes no metadata.

        A replacement of a complete subject (a staged write), and any subject of a
        store only this process sees (``memory://``), is left to :meth:`finish_subject`
        in the client (:meth:`is_pending` tells): ``written`` is returned as it is.

        Returns
        -------
        dask.delayed.Delayed
            Publishes the subject (``bold``, then its group document); rerun after a lost
            worker, it leaves a subject it already published as it is.
        """
        if self._staged(subject) in self._pending or str(self.url).startswith("memory:"):
            return written
        _, attrs, bold = self._take_pending(subject)
        # bound first: dask.delayed would walk the Zarr array's metadata looking for collections
        finish = functools.partial(_finish_on_worker, self, subject, attrs, bold)
        return dask.delayed(finish, pure=False)(written)

    def is_published(self, subject: str) -> bool:
        """Whether a group document of ``subject`` exists (one read): published, by this run
        or an earlier one."""
        return _group_attributes(self._subject_documents([subject]).get(subject)) is not None

    def write_bold_whole(self, subject: str, bold: np.ndarray, attrs: dict) -> bool:
        """Write and publish a new subject in one call, on a worker (ingest's batch tasks).

        What an interrupted write of ``subject`` left (chunks without metadata) is
        removed, the ``bold`` chunks are written, then the ``bold`` metadata and the
        group document (attributes and ``ingest_complete``): readers see the subject
        complete or not at all.  Deterministic: a rerun writes the same bytes.

        Returns
        -------
        bool
            False when ``subject`` was already published (a rerun of the task after a
            lost worker): it is left as it is and nothing is written.

        Raises
        ------
        ValueError
            ``bold`` is not (n_voxels, n_time); nothing is published.
        """
        self._require_writable()
        if self.is_published(subject):
            return False
        bold = np.asarray(bold, dtype=np.float32)
        if bold.ndim != 2 or bold.shape[0] != self.n_voxels:
            raise ValueError(f"store {self.url}: subject {subject!r} has shape {bold.shape}, "
                             f"the store expects ({self.n_voxels}, n_time)")
        path = self._subject_path(subject)
        _remove_node(self._root.store, path)
        target = _unpublished_array(
            self._root.store, _join(path, "bold"), bold.shape, (self.voxel_chunk, bold.shape[1]),
            np.float32, ("voxel", "time"), np.float32("nan"))
        attrs = _new_subject_attrs(subject, attrs)
        target[...] = bold  # returns once every chunk is stored; only then published
        # another process may have removed chunks meanwhile (a rerun's cleanup while the
        # batch of a killed client was still writing): never publish an incomplete subject
        found = _count_keys(self._root.store, _join(path, "bold") + "/")
        expected = _stored_chunks_expected(bold, self.voxel_chunk)
        if found < expected:
            raise RuntimeError(f"store {self.url}: subject {subject!r}: {expected - found} of "
                               f"its {expected} series chunk(s) vanished while they were "
                               "written (another process cleaned the store); not published")
        self._publish_subject(subject, subject, attrs, target)
        return True

    def forget_listings(self) -> None:
        """Drop this process's cached listings of the store (s3fs keeps them): subjects
        that other processes (the workers) published are listed from now on."""
        fs = getattr(self._root.store, "fs", None)
        if fs is not None and hasattr(fs, "invalidate_cache"):
            fs.invalidate_cache()

    def is_pending(self, subject: str) -> bool:
        """Whether ``subject`` was begun here and still awaits :meth:`finish_subject`."""
        return subject in self._pending or self._staged(subject) in self._pending

    def _take_pending(self, subject: str) -> tuple[str, dict, zarr.Array]:
        staged = self._staged(subject)
        name = staged if staged in self._pending else subject
        if name not in self._pending:
            raise ValueError(f"store {self.url}: subject {subject!r} was not begun by "
                             "begin_subject on this store object")
        attrs, bold = self._pending.pop(name)
        return name, attrs, bold

    def _publish_subject(self, subject: str, name: str, attrs: dict, bold: zarr.Array,
                         *, again: bool = False) -> None:
        """``bold``'s metadata, then the group document ``name`` (flagged complete; a staged
        replacement is then swapped in).  ``again`` (a new subject only: the task of
        :meth:`finish_graph`, which a lost worker reruns): a subject already published is
        left as it is."""
        if again and _group_attributes(self._subject_documents([name])[name]) is not None:
            return  # begun as a new subject, so the group is this write's, published
        _publish(bold)
        staged = name == self._staged(subject)
        flag = STAGED_FLAG if staged else INGEST_FLAG
        self._subjects_group().create_group(name, attributes=to_jsonable({**attrs, flag: True}))
        if staged:
            self._swap_in(subject)

    def _swap_in(self, subject: str) -> None:
        """Replace ``subject`` by its complete staged group (also after an interruption)."""
        subjects = self._subjects_group()
        _remove_node(subjects.store, self._subject_path(subject))
        _move_node(subjects.store, self._subject_path(self._staged(subject)),
                   self._subject_path(subject))
        grp = self._subjects_group()[subject]
        grp.attrs.update({INGEST_FLAG: True})
        log.info("Replaced subject %s in %s", subject, self.url)

    def abort_subject(self, subject: str) -> None:
        """Drop an unfinished write of ``subject``; a complete subject it was to replace stays."""
        self._require_writable()
        if SUBJECTS not in self._root:
            return
        subjects = self._root[SUBJECTS]
        staged = self._staged(subject)
        self._pending.pop(staged, None)
        self._pending.pop(subject, None)
        if not (staged in subjects and subjects[staged].attrs.get(STAGED_FLAG) is True):
            _remove_node(subjects.store, self._subject_path(staged))
        if not (subject in subjects and subjects[subject].attrs.get(INGEST_FLAG) is True):
            _remove_node(subjects.store, self._subject_path(subject))

    def write_subject(self, subject: str, bold, attrs: dict) -> None:
        """Write one subject's time series, then mark it complete.

        Parameters
        ----------
        subject : str
            Subject id (group name).
        bold : ndarray or dask array of shape (n_voxels, n_time)
            Masked series in store voxel order (cast to float32).
        attrs : dict
            Subject attributes (source, tr, n_volumes, preprocessing...).

        On any error the partial subject group is removed and the error re-raised.
        """
        n_time = int(bold.shape[1])
        try:
            target = self.begin_subject(subject, n_time, attrs)
            dask.compute(self.bold_store_graph(bold, target))
            self.finish_subject(subject)
        except BaseException:
            self.abort_subject(subject)
            raise
        log.info("Wrote subject %s (%d voxels x %d volumes)", subject, self.n_voxels, n_time)

    def remove_subject(self, subject: str) -> None:
        """Delete a subject group (complete or not); no error if absent."""
        self._require_writable()
        if SUBJECTS in self._root:
            _remove_node(self._root.store, self._subject_path(subject))

    def subject_listing(self) -> dict[str, tuple[dict | None, frozenset[str]]]:
        """Every folder under ``subjects/``, read at once: one listing of the keys and one
        concurrent read of the group documents (not a metadata read per node).

        Returns
        -------
        dict name -> (attributes or None, names under it)
            Sorted by name; None: no group document (a write not finished).
        """
        if SUBJECTS not in self._root:
            return {}
        store = self._root.store
        prefix = _join(self._root.path, SUBJECTS) + "/"

        async def keys() -> list[str]:
            return [k async for k in store.list_prefix(prefix)]

        children: dict[str, set[str]] = {}
        for key in _zarr_sync(keys()):
            parts = key[len(prefix):].split("/")
            if len(parts) >= 2 and not parts[0].endswith(".partial"):
                children.setdefault(parts[0], set()).add(parts[1])
        docs = self._subject_documents(list(children))
        return {name: (_group_attributes(docs.get(name)), frozenset(children[name]))
                for name in sorted(children)}

    def cleanup_incomplete(self) -> list[str]:
        """Remove interrupted subjects and interrupted CFH results.

        The store is listed once (:meth:`subject_listing`); only the nodes there are
        removed.

        Returns
        -------
        list of str
            Subjects whose group was removed.
        """
        self._require_writable()
        removed, swapped = [], set()
        store = self._root.store
        for name, (attrs, children) in self.subject_listing().items():
            if name in swapped:
                continue
            path = self._subject_path(name)
            if attrs is not None and name.startswith(STAGED_PREFIX) \
                    and attrs.get(STAGED_FLAG) is True:
                swapped.add(name.removeprefix(STAGED_PREFIX))
                self._swap_in(name.removeprefix(STAGED_PREFIX))  # interrupted swap
            elif attrs is None or attrs.get(INGEST_FLAG) is not True:
                _remove_node(store, path)
                removed.append(name)
            else:
                for metric, names in METRICS.items():
                    if attrs.get(self._flag(metric)) is not True:
                        for var in map(self._array_name, names):
                            if var in children:  # published, or chunks without metadata
                                _remove_node(store, _join(path, var))
        if removed:
            log.warning("Removed %d interrupted subject(s) from %s: %s",
                        len(removed), self.url, ", ".join(sorted(removed)))
        return sorted(removed)

    def write_cfh(self, subject: str, cfh, counterpart, r, attrs: dict, *,
                  metric: str = "cfh") -> None:
        """Write a subject's CFH results (``metric`` "cfh" or "cfh_subject").

        Parameters
        ----------
        subject : str
            An ingested subject.
        cfh : array (n_voxels,)
            Fisher z of the CFH (float32, NaN where none).
        counterpart : array (n_voxels,)
            Store voxel index of the counterpart, -1 where none (int32).
        r : array (n_voxels,)
            Pearson r with the counterpart (float32, NaN where none).
        attrs : dict
            Added to the subject attributes (e.g. ``cfh_params``, ``n_constant``).
        metric : {"cfh", "cfh_subject"}
            Group-defined or per-subject counterpart.
        """
        if metric not in ("cfh", "cfh_subject"):
            raise ValueError(f"metric must be 'cfh' or 'cfh_subject', not {metric!r}")
        self.write_metric(subject, metric, {metric: cfh, f"{metric}_r": r,
                                            f"{metric}_counterpart": counterpart}, attrs)

    def write_metric(self, subject: str, metric: str, values: dict, attrs: dict) -> None:
        """Write a subject's maps of one metric, then set ``<metric>_complete``.

        Parameters
        ----------
        subject : str
            An ingested subject.
        metric : str
            One of :data:`METRICS`; ``values`` must hold exactly its arrays.
        values : dict name -> array (n_voxels,)
            Cast to float32 (int32 for counterparts); NumPy or Dask.
        attrs : dict
            Added to the subject attributes (e.g. ``<metric>_params``).

        On any error the partial arrays are removed, the flag stays unset and
        the error is re-raised.
        """
        self._require_writable()
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}")
        names = METRICS[metric]
        if set(values) != set(names):
            raise ValueError(f"{metric} needs arrays {names}, got {tuple(values)}")
        grp = self._group(subject)
        flag = self._flag(metric)
        for name, v in values.items():
            if tuple(v.shape) != (self.n_voxels,):
                raise ValueError(f"{name} has shape {tuple(v.shape)}, "
                                 f"expected ({self.n_voxels},)")
        try:
            if flag in grp.attrs:
                grp.attrs.update({flag: False})
            graphs, targets = [], []
            for name in names:
                v = values[name]
                dtype = _dtype(name)
                path = _join(grp.path, name)
                _remove_node(grp.store, path)
                target = _unpublished_array(grp.store, path, (self.n_voxels,),
                                            (self.voxel_chunk,), dtype, ("voxel",), _fill(name))
                targets.append(target)
                if isinstance(v, da.Array):
                    graphs.append(da.store(v.astype(dtype).rechunk(target.chunks), target,
                                           lock=False, compute=False))
                else:  # in memory already: written here, not queued behind a cluster's work
                    target[...] = np.asarray(v, dtype=dtype)
            if graphs:
                dask.compute(*graphs)
            for target in targets:  # every chunk is written: the arrays appear, whole
                _publish(target)
            grp.attrs.update(to_jsonable({**dict(attrs), flag: True}))
        except BaseException:
            for name in names:
                _remove_node(grp.store, _join(grp.path, name))
            if flag in grp.attrs:
                grp.attrs.update({flag: False})
            raise

    def invalidate(self, metric: str, subjects: Sequence[str]) -> None:
        """Hide (and delete) the maps of ``metric`` of these subjects, e.g. when stale.

        Each subject's flag is unset before its arrays go (a reader never sees a flagged
        subject without its maps); the subjects are handled concurrently, their group
        documents read at once, so a cohort costs a few round trips, not several a
        subject.  Subjects without a group are skipped.
        """
        self._require_writable()
        flag = self._flag(metric)
        docs = self._subject_documents(subjects)
        jobs = [(self._subject_key(s), _unflagged_document(docs[s], flag),
                 [self._subject_key(s, name) for name in METRICS[metric]])
                for s in docs if _group_attributes(docs[s]) is not None]
        _hide_and_remove(self._root.store, jobs)

    def cfh_maps(self, subjects: Sequence[str] | None = None, var: str = "cfh", *,
                 whole: bool = False) -> xr.DataArray:
        """Per-subject maps of any metric, stacked lazily.

        Parameters
        ----------
        subjects : sequence of str, optional
            Default: every subject with complete maps of ``var``'s metric.
        var : str
            An array of :data:`METRICS`, e.g. ``"cfh"``, ``"cfh_r"``,
            ``"cfh_subject_counterpart"``, ``"vmhc"``, ``"ai"``.
        whole : bool
            One Dask chunk (one read task) per subject's whole map, instead of
            one per subject and Zarr chunk of voxels: fewer tasks where all the
            maps go to one place (the group statistics).

        Returns
        -------
        xarray.DataArray of dims (subject, voxel), Dask-backed
            Coordinates ``subject`` and ``hemisphere`` (per voxel).
        """
        metric = metric_of(var)
        names = list(self.subjects(metric) if subjects is None else subjects)
        if names:
            data = self._maps_array(names, metric, var, whole)
        else:
            data = da.zeros((0, self.n_voxels), dtype=_dtype(var), chunks=(1, self.voxel_chunk))
        return xr.DataArray(
            data, dims=("subject", "voxel"), name=var,
            coords={"subject": np.asarray(names, dtype=object),
                    "hemisphere": ("voxel", self.hemisphere)},
        )

    def _maps_array(self, names: list[str], metric: str, var: str,
                    whole: bool = False) -> da.Array:
        """The maps ``var`` of ``names`` (complete for ``metric``) stacked, lazily: read by
        whoever computes them (one task per subject and voxel chunk opens the array by URL).

        The client reads each subject's group and array documents at once and checks each
        distinct array document once (:func:`~cfhdask.io.arrays.store_array`: numeric, the
        data type expected), so its cost per subject is a parse, not a Zarr open.
        """
        arr_name = self._array_name(var)
        groups = self._subject_documents(names)
        self._complete_attrs(names, metric, groups)
        arrays = self._subject_documents(names, arr_name)
        checked: dict[bytes | None, zarr.Array] = {}
        for s in names:  # one real open per distinct document: its errors name the subject
            doc = arrays[s]
            if doc not in checked:
                node = store_array(self._group(s, metric), arr_name, _dtype(var),
                                   where=f"{self._where}: subjects/{s}")
                if tuple(node.shape) != (self.n_voxels,):
                    raise CfhdaskInputError(
                        f"{self._where}: subjects/{s}/{arr_name}: shape {tuple(node.shape)}, "
                        f"expected ({self.n_voxels},)")
                checked[doc] = node
        voxel_chunks = ((self.n_voxels,) if whole else
                        normalize_chunks(next(iter(checked.values())).chunks,
                                         (self.n_voxels,))[0])
        bounds = np.cumsum((0, *voxel_chunks)).tolist()
        token = tokenize(self.url, arr_name, names, [groups[s] for s in names],
                         [arrays[s] for s in names], voxel_chunks)
        name = f"{var}-maps-{token}"
        options = json.dumps(self.storage_options, sort_keys=True, default=str)
        layer = {}
        for i, s in enumerate(names):
            path = self._subject_key(s, arr_name)
            for j in range(len(voxel_chunks)):
                key = (name, i, j)
                layer[key] = Task(key, _read_map_block, self.url, options, path,
                                  bounds[j], bounds[j + 1])
        dtype = np.dtype(_dtype(var))
        graph = HighLevelGraph.from_collections(name, layer, dependencies=())
        return da.Array(graph, name, chunks=((1,) * len(names), voxel_chunks), dtype=dtype,
                        meta=np.empty((0, 0), dtype=dtype))

    # ------------------------------------------------------------------ group counterpart
    def group_counterpart(self) -> dict | None:
        """The stored group counterpart, or None when there is none (complete).

        Returns
        -------
        dict or None
            ``index`` (n_voxels,) int32 store index of each voxel's group
            counterpart (-1: none), ``summed_r`` (n_voxels,) float32, and the
            group's attributes (``fingerprint``, ``reference``, ``params``...).
        """
        if COUNTERPART not in self._root:
            return None
        grp = self._root[COUNTERPART]
        attrs = dict(grp.attrs)
        if attrs.get("complete") is not True:
            return None
        return {"index": np.asarray(grp["index"][...]),
                "summed_r": np.asarray(grp["summed_r"][...]), **attrs}

    def write_group_counterpart(self, index, summed_r, attrs: dict) -> None:
        """Replace the group counterpart (``complete`` is written last).

        Parameters
        ----------
        index : int array (n_voxels,)
            Store voxel index of each voxel's group counterpart, -1 where none.
        summed_r : float array (n_voxels,)
            Sum over the reference subjects of r with that counterpart.
        attrs : dict
            ``fingerprint``, ``reference``, ``params``...
        """
        self._require_writable()
        if COUNTERPART in self._root:
            self._root[COUNTERPART].attrs.update({"complete": False})
        grp = self._root.require_group(COUNTERPART)
        for name, v, dtype in (("index", index, np.int32), ("summed_r", summed_r, np.float32)):
            v = np.asarray(v, dtype=dtype)
            if v.shape != (self.n_voxels,):
                raise ValueError(f"{name} has shape {v.shape}, expected ({self.n_voxels},)")
            _write_array(grp, name, v, fill=_fill("counterpart" if dtype == np.int32 else ""))
        grp.attrs.update(to_jsonable({**dict(attrs), "written": now_iso()}))
        grp.attrs.update({"complete": True})

    # ------------------------------------------------------------------ xarray views
    def dataset(self) -> xr.Dataset:
        """The voxel table (ijk, xyz, hemisphere) and root attributes as a Dataset."""
        return xr.open_zarr(self.url, consolidated=False, zarr_format=3,
                            storage_options=self.storage_options or None)

    def datatree(self) -> xr.DataTree:
        """The whole store as a DataTree, with complete subjects and complete maps only.

        Subjects still being ingested are left out, and so are the arrays of a
        metric whose completion flag is not set (maps being written, or left
        by an interrupted run): a reader never sees a half-written subject.
        """
        with _quiet_listing():
            tree = xr.open_datatree(self.url, engine="zarr", consolidated=False,
                                    zarr_format=3, storage_options=self.storage_options or None)
        if SUBJECTS not in tree.children:
            return tree
        groups = self._all_subject_groups()
        bad = [s for s in self.incomplete_subjects() if s in tree[SUBJECTS].children]
        if bad:
            tree[SUBJECTS] = tree[SUBJECTS].drop_nodes(bad)
        for name, node in tree[SUBJECTS].children.items():
            attrs = dict(groups[name].attrs) if name in groups else {}
            partial = [var for metric, names in METRICS.items()
                       if attrs.get(self._flag(metric)) is not True
                       for var in map(self._array_name, names) if var in node.data_vars]
            if partial:
                tree[f"{SUBJECTS}/{name}"] = node.to_dataset().drop_vars(partial)
        return tree

    def preprocessing_settings(self, subjects: Sequence[str] | None = None) -> dict[str, dict]:
        """Subject -> :func:`preprocessing_setting` of complete subjects (default all)."""
        names = self.subjects() if subjects is None else list(subjects)
        return {s: preprocessing_setting(attrs.get("preprocessing"))
                for s, attrs in self.subjects_attrs(names).items()}

    def store_preprocessing(self) -> dict | None:
        """The preprocessing setting every subject of the store shares (None: no subject)."""
        rec = self.attrs.get("preprocessing")
        if rec is not None:
            return rec
        found = self.preprocessing_settings()
        return next(iter(found.values()), None)

    def check_same_preprocessing(self, subjects: Sequence[str] | None = None) -> None:
        """Refuse subjects preprocessed in different ways (naming both settings).

        Raises
        ------
        CfhdaskInputError
        """
        found = self.preprocessing_settings(subjects)
        first = next(iter(found.items()), None)
        for s, setting in found.items():
            if setting != first[1]:
                raise CfhdaskInputError(
                    f"store {self.url}: subjects were preprocessed differently and cannot "
                    f"be analysed together: {first[0]} {describe_setting(first[1])}; {s} "
                    f"{describe_setting(setting)} ({settings_differ(first[1], setting)})")

    def series_reader(self, subjects: Sequence[str]) -> SeriesReader:
        """A picklable reader of these ingested subjects' series (see :class:`SeriesReader`)."""
        self.subjects_attrs(subjects)  # each one ingested: one read of every document at once
        return SeriesReader(self.url, subjects, self.storage_options)

    def series_readers(self, subjects: Sequence[str]) -> SubjectReaders:
        """:meth:`series_reader` of each subject alone, the subjects checked at once."""
        self.subjects_attrs(subjects)
        return SubjectReaders(self.url, self.storage_options)

    def same_voxels(self, other: CohortStore) -> bool:
        """Whether ``other`` has the same grid, affine and voxel table."""
        return (tuple(self.grid_shape) == tuple(other.grid_shape)
                and np.allclose(self.affine, other.affine, atol=1e-4)
                and (self.n_left, self.n_right, self.n_midline)
                == (other.n_left, other.n_right, other.n_midline)
                and np.array_equal(self.ijk, other.ijk))

    def set_attrs(self, **attrs: Any) -> None:
        """Set root attributes (JSON-able values), e.g. a study's fingerprint."""
        self._require_writable()
        self._root.attrs.update(to_jsonable(attrs))

    def append_history(self, command: str, parameters: dict) -> None:
        """Record a command run on the store (provenance)."""
        self._require_writable()
        history = list(self._root.attrs.get("history", []))
        history.append(to_jsonable({"command": command, "parameters": parameters,
                                  "time": now_iso(), "version": __version__}))
        self._root.attrs.update({"history": history})

    def __repr__(self) -> str:
        return (f"CohortStore({self.url!r}, grid={self.grid_shape}, voxels={self.n_voxels} "
                f"[L {self.n_left} / R {self.n_right} / mid {self.n_midline}], "
                f"subjects={len(self.subjects())})")


def open_store(url: str, mode: Literal["r", "r+"] = "r",
               storage_options: dict | None = None) -> CohortStore:
    """Open an existing cohort store (see :meth:`CohortStore.open`)."""
    return CohortStore.open(url, mode=mode, storage_options=storage_options)


def _reopen(url: str, mode: Literal["r", "r+"], storage_options: dict) -> CohortStore:
    """A pickled store, reopened on a worker (no write probe)."""
    return CohortStore.open(url, mode=mode, storage_options=storage_options, probe=False)


@functools.lru_cache(maxsize=1024)
def _bold_array(url: str, options: str, subject: str) -> zarr.Array:
    """A subject's series, opened from its own metadata document alone: not through the
    root's, whose history grows with the cohort (read once per subject, it made a
    worker's reads quadratic in the cohort size)."""
    return zarr.open_array(store=url, path=_join(SUBJECTS, subject, "bold"), mode="r",
                           zarr_format=3, storage_options=json.loads(options) or None)


class SeriesReader:
    """Reads voxel ranges of subjects' series straight from a store (picklable).

    ``reader(k, start, stop)`` is the float32 (stop - start, n_time) block of
    voxels ``start:stop`` of subject ``subjects[k]``.  Workers open each
    subject's array once per process and decompress only the chunks a read
    touches.  Used by graphs that must not keep a subject's data between tasks
    (:func:`cfhdask.cfh.groupsum.group_sum_graph`).
    """

    def __init__(self, url: str, subjects: Sequence[str], storage_options: dict | None = None):
        self.url = str(url)
        self.subjects = tuple(subjects)
        self._options = json.dumps(dict(storage_options or {}), sort_keys=True, default=str)

    def __call__(self, k: int, start: int, stop: int) -> np.ndarray:
        return np.asarray(_bold_array(self.url, self._options, self.subjects[k])[start:stop],
                          dtype=np.float32)

    def __repr__(self) -> str:
        return f"SeriesReader({self.url!r}, {len(self.subjects)} subjects)"


class SubjectReaders:
    """Each checked subject's :class:`SeriesReader`, made when asked for (picklable).

    What a task that reads one of many subjects may carry, whatever the
    cohort's size: the store's URL and options, not one reader per subject
    (:meth:`CohortStore.series_readers` checked the subjects).
    """

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = str(url)
        self._options = dict(storage_options or {})

    def __getitem__(self, subject: str) -> SeriesReader:
        return SeriesReader(self.url, [subject], self._options)


def _copy_array(grp: zarr.Group, src: str, dst: str) -> None:
    old = grp[src]
    _write_array(grp, dst, old[...], chunks=old.chunks, fill=old.fill_value)


def migrate_store(url: str, storage_options: dict | None = None) -> list[str]:
    """Upgrade a version-1 store to the current layout, in place, computing nothing.

    Version 1 held one CFH per subject, the per-subject maximum, as ``cfh``,
    ``counterpart``, ``r_max`` (flag ``cfh_complete``).  They become
    ``cfh_subject``, ``cfh_subject_counterpart``, ``cfh_subject_r`` (flag
    ``cfh_subject_complete``); ``cfh`` is now the group-counterpart CFH.  New
    arrays are written before the old ones are removed and the version is
    bumped last, so an interrupted migration is finished by running it again.

    Returns
    -------
    list of str
        Subjects whose maps were renamed.
    """
    try:
        root = zarr.open_group(store=url, mode="r+", zarr_format=3,
                               storage_options=storage_options or None,
                               use_consolidated=False)
    except Exception as exc:
        raise CfhdaskInputError(f"store {url}: cannot open for migration: {exc}") from exc
    version = root.attrs.get("cfhdask_store_version")
    if version == STORE_VERSION:
        log.info("store %s is already at layout version %d", url, STORE_VERSION)
        return []
    if version != 1:
        raise StoreVersionError(f"store {url}: layout version {version!r} cannot be migrated "
                                f"(this cfhdask migrates version 1 to {STORE_VERSION})")
    moved = []
    subjects = root[SUBJECTS] if SUBJECTS in root else {}
    for name, grp in (subjects.groups() if subjects else []):
        if grp.attrs.get("cfh_complete") is True and "cfh" in grp:
            for new, old in _V1_ARRAYS.items():
                _copy_array(grp, old, new)
            params = dict(grp.attrs.get("cfh_params") or {})
            params["counterpart"] = "subject"
            grp.attrs.update(to_jsonable({"cfh_subject_params": params,
                                          "cfh_subject_complete": True}))
            moved.append(name)
        for old in _V1_ARRAYS.values():
            _remove_node(grp.store, _join(grp.path, old))
        for key in ("cfh_complete", "cfh_params"):
            if key in grp.attrs:
                del grp.attrs[key]
    history = list(root.attrs.get("history", []))
    history.append(to_jsonable({"command": "migrate", "parameters": {
        "from_version": 1, "to_version": STORE_VERSION, "subjects": moved},
        "time": now_iso(), "version": __version__}))
    root.attrs.update({"history": history, "cfhdask_store_version": STORE_VERSION})
    log.info("Migrated store %s to layout version %d: %d subject(s) with per-subject CFH "
             "maps, now cfh_subject", url, STORE_VERSION, len(moved))
    return sorted(moved)
