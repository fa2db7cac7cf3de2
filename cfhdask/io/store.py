"""The cohort store: one Zarr v3 group holding a whole cohort.

Layout (see the README, section *The cohort store*)::

    STORE/                      attrs: cfhdask_store_version, grid_shape, affine, mask, ...
      ijk        (voxel, axis)  int32
      xyz        (voxel, axis)  float32
      hemisphere (voxel)        int8
      subjects/<subject>/       attrs: subject, source, tr, ..., ingest_complete (last)
        bold        (voxel, time) float32, chunks (voxel_chunk, n_time)
        cfh         (voxel)       float32
        counterpart (voxel)       int32
        r_max       (voxel)       float32

Voxels are ordered left hemisphere, right hemisphere, midline (C order inside
each block), so each hemisphere is a contiguous slice.  Subject groups become
visible to readers only once their completion flag has been written; a failed
write removes the group.  Arrays are written chunk-aligned (one Dask block per
Zarr chunk) so parallel writers never share a chunk.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from cfhdask._version import __version__
from cfhdask.errors import CfhdaskInputError, StoreVersionError
from cfhdask.grid import voxel_table
from cfhdask.io.arrays import store_array
from cfhdask.io.atomic import to_jsonable
from cfhdask.io.urls import url_to_fs
from cfhdask.settings import settings

log = logging.getLogger(__name__)

#: Layout version written into (and required from) every store.
STORE_VERSION = 1
SUBJECTS = "subjects"
INGEST_FLAG = "ingest_complete"
#: Prefix of the group a replacement subject is written to (``--overwrite``) until it
#: is complete; subject ids never start with ``__``.
STAGED_PREFIX = "__new__"
STAGED_FLAG = "staged_complete"
CFH_FLAG = "cfh_complete"
CFH_VARS = ("cfh", "counterpart", "r_max")
_CFH_DTYPES = {"cfh": np.float32, "counterpart": np.int32, "r_max": np.float32}

Stage = Literal["ingested", "cfh"]


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
        self.grid_shape: tuple[int, int, int] = tuple(int(s) for s in attrs["grid_shape"])
        self.affine: np.ndarray = np.asarray(attrs["affine"], dtype=np.float64)
        self.n_left = int(attrs["n_left"])
        self.n_right = int(attrs["n_right"])
        self.n_midline = int(attrs["n_midline"])
        self.n_voxels = self.n_left + self.n_right + self.n_midline
        self.voxel_chunk = int(attrs.get("voxel_chunk", max(1, self.n_voxels)))
        self._where = f"store {self.url}"
        self._ijk: np.ndarray | None = None
        self._xyz: np.ndarray | None = None
        self._hemisphere: np.ndarray | None = None

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
            arr = root.create_array(name, shape=values.shape, dtype=values.dtype,
                                    chunks=values.shape, dimension_names=dims,
                                    compressors=_compressors(values.dtype))
            arr[...] = values
        root.require_group(SUBJECTS)
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
             storage_options: dict | None = None) -> CohortStore:
        """Open an existing cohort store.

        Parameters
        ----------
        url : str
            Directory or fsspec URL of the store.
        mode : {"r", "r+"}
            Read only, or read and write.
        storage_options : dict, optional
            fsspec options for remote URLs.

        Raises
        ------
        CfhdaskInputError
            No cohort store at ``url``.
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
            raise CfhdaskInputError(f"store {url}: not a cfhdask cohort store "
                                    "(no cfhdask_store_version attribute)")
        if version != STORE_VERSION:
            raise StoreVersionError(
                f"store {url}: layout version {version!r} (written by cfhdask "
                f"{attrs.get('cfhdask_version', '?')}) is not supported by cfhdask "
                f"{__version__}, which reads version {STORE_VERSION}")
        return cls(url, root, storage_options)

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
        return self._root.require_group(SUBJECTS) if self.writable else self._root[SUBJECTS]

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
        return dict(self._root[SUBJECTS].groups())

    def subjects(self, stage: Stage = "ingested") -> list[str]:
        """Complete subjects, sorted.

        Parameters
        ----------
        stage : {"ingested", "cfh"}
            ``"ingested"``: time series written completely; ``"cfh"``: CFH
            maps written completely too.
        """
        if stage not in ("ingested", "cfh"):
            raise ValueError(f"stage must be 'ingested' or 'cfh', not {stage!r}")
        out = []
        for name, grp in self._all_subject_groups().items():
            if name.startswith(STAGED_PREFIX):
                continue
            attrs = grp.attrs
            if attrs.get(INGEST_FLAG) is not True:
                continue
            if stage == "cfh" and attrs.get(CFH_FLAG) is not True:
                continue
            out.append(name)
        return sorted(out)

    def incomplete_subjects(self) -> list[str]:
        """Subject groups whose ingest never finished (invisible to readers)."""
        return sorted(name for name, grp in self._all_subject_groups().items()
                      if grp.attrs.get(INGEST_FLAG) is not True)

    def _group(self, subject: str, stage: Stage = "ingested") -> zarr.Group:
        grp = None
        if SUBJECTS in self._root and subject in self._root[SUBJECTS]:
            grp = self._root[SUBJECTS][subject]
        flag = INGEST_FLAG if stage == "ingested" else CFH_FLAG
        if grp is None or grp.attrs.get(INGEST_FLAG) is not True or \
                grp.attrs.get(flag) is not True:
            what = "ingested" if stage == "ingested" else "with CFH results"
            raise CfhdaskInputError(f"store {self.url}: no subject {subject!r} {what}")
        return grp

    def subject_attrs(self, subject: str) -> dict:
        """Attributes of a complete subject (source, tr, n_volumes, provenance...)."""
        return dict(self._group(subject).attrs)

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
        """Create an (incomplete) subject group and its empty ``bold`` array.

        A complete subject of that name is kept: the replacement is written to
        a staged group and swapped in by :meth:`finish_subject` only once it is
        complete, so readers see the old subject until then (and keep it if
        the replacement fails, :meth:`abort_subject`).  An incomplete group of
        that name is removed first.  The group stays invisible until
        :meth:`finish_subject`.  Use :meth:`write_subject` unless you schedule
        the writes yourself (as ingest does).

        Returns
        -------
        zarr.Array
            The ``bold`` array (n_voxels, n_time), chunks (voxel_chunk, n_time).
        """
        self._require_writable()
        subjects = self._subjects_group()
        name = subject
        if subject in subjects and subjects[subject].attrs.get(INGEST_FLAG) is True:
            name = self._staged(subject)
        if name in subjects:
            del subjects[name]
        grp = subjects.create_group(name)
        attrs = dict(attrs)
        attrs.pop(INGEST_FLAG, None)
        attrs.pop(CFH_FLAG, None)
        attrs.setdefault("subject", subject)
        attrs.setdefault("ingested", now_iso())
        grp.attrs.update(to_jsonable(attrs))
        return grp.create_array(
            "bold", shape=(self.n_voxels, int(n_time)), dtype=np.float32,
            chunks=(self.voxel_chunk, int(n_time)), dimension_names=["voxel", "time"],
            compressors=_compressors(np.float32), fill_value=np.float32("nan"))

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
        """Mark a subject written by :meth:`begin_subject` as complete.

        A staged replacement is flagged complete, then swapped for the old
        subject (old group deleted, staged group renamed, completion flag set).
        """
        subjects = self._subjects_group()
        staged = self._staged(subject)
        if staged in subjects:
            grp = subjects[staged]
            if extra_attrs:
                grp.attrs.update(to_jsonable(extra_attrs))
            grp.attrs.update({STAGED_FLAG: True})
            self._swap_in(subject)
            return
        grp = subjects[subject]
        if extra_attrs:
            grp.attrs.update(to_jsonable(extra_attrs))
        grp.attrs.update({INGEST_FLAG: True})

    def _swap_in(self, subject: str) -> None:
        """Replace ``subject`` by its complete staged group (also after an interruption)."""
        fs, root = url_to_fs(self.url, self.storage_options, what="store")
        base = f"{root.rstrip('/')}/{SUBJECTS}"
        subjects = self._subjects_group()
        if subject in subjects:
            del subjects[subject]
        fs.mv(f"{base}/{self._staged(subject)}", f"{base}/{subject}", recursive=True)
        if hasattr(fs, "invalidate_cache"):
            fs.invalidate_cache()
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
        if staged in subjects:
            del subjects[staged]
        elif subject in subjects and subjects[subject].attrs.get(INGEST_FLAG) is not True:
            del subjects[subject]

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
        if SUBJECTS in self._root and subject in self._root[SUBJECTS]:
            del self._root[SUBJECTS][subject]

    def cleanup_incomplete(self) -> list[str]:
        """Remove interrupted subjects and interrupted CFH results.

        Returns
        -------
        list of str
            Subjects whose group was removed.
        """
        self._require_writable()
        removed = []
        for name, grp in self._all_subject_groups().items():
            if name.startswith(STAGED_PREFIX) and grp.attrs.get(STAGED_FLAG) is True:
                self._swap_in(name.removeprefix(STAGED_PREFIX))  # interrupted swap
                continue
            if grp.attrs.get(INGEST_FLAG) is not True:
                del self._root[SUBJECTS][name]
                removed.append(name)
            elif grp.attrs.get(CFH_FLAG) is not True:
                for var in CFH_VARS:
                    if var in grp:
                        del grp[var]
        if removed:
            log.warning("Removed %d interrupted subject(s) from %s: %s",
                        len(removed), self.url, ", ".join(sorted(removed)))
        return sorted(removed)

    def write_cfh(self, subject: str, cfh, counterpart, r_max, attrs: dict) -> None:
        """Write a subject's CFH results, then set ``cfh_complete``.

        Parameters
        ----------
        subject : str
            An ingested subject.
        cfh : array (n_voxels,)
            Fisher z of the CFH (float32, NaN where none).
        counterpart : array (n_voxels,)
            Store voxel index of the counterpart, -1 where none (int32).
        r_max : array (n_voxels,)
            Maximum Pearson r (float32, NaN where none).
        attrs : dict
            Added to the subject attributes (e.g. ``cfh_params``, ``n_constant``).

        On any error the partial CFH arrays are removed and the error re-raised.
        """
        self._require_writable()
        grp = self._group(subject)
        values = {"cfh": cfh, "counterpart": counterpart, "r_max": r_max}
        for name, v in values.items():
            if tuple(v.shape) != (self.n_voxels,):
                raise ValueError(f"{name} has shape {tuple(v.shape)}, "
                                 f"expected ({self.n_voxels},)")
        try:
            if CFH_FLAG in grp.attrs:
                grp.attrs.update({CFH_FLAG: False})
            graphs = []
            for name, v in values.items():
                if name in grp:
                    del grp[name]
                dtype = _CFH_DTYPES[name]
                target = grp.create_array(
                    name, shape=(self.n_voxels,), dtype=dtype, chunks=(self.voxel_chunk,),
                    dimension_names=["voxel"], compressors=_compressors(dtype),
                    fill_value=-1 if name == "counterpart" else np.float32("nan"))
                arr = v if isinstance(v, da.Array) else da.from_array(np.asarray(v))
                graphs.append(da.store(arr.astype(dtype).rechunk(target.chunks), target,
                                       lock=False, compute=False))
            dask.compute(*graphs)
            grp.attrs.update(to_jsonable(dict(attrs)))
            grp.attrs.update({CFH_FLAG: True})
        except BaseException:
            for name in CFH_VARS:
                if name in grp:
                    del grp[name]
            if CFH_FLAG in grp.attrs:
                grp.attrs.update({CFH_FLAG: False})
            raise

    def cfh_maps(self, subjects: Sequence[str] | None = None, var: str = "cfh") -> xr.DataArray:
        """Per-subject CFH results stacked lazily.

        Parameters
        ----------
        subjects : sequence of str, optional
            Default: every subject with complete CFH results.
        var : {"cfh", "counterpart", "r_max"}
            Which result.

        Returns
        -------
        xarray.DataArray of dims (subject, voxel), Dask-backed
            Coordinates ``subject`` and ``hemisphere`` (per voxel).
        """
        if var not in CFH_VARS:
            raise ValueError(f"var must be one of {CFH_VARS}, not {var!r}")
        names = list(self.subjects("cfh") if subjects is None else subjects)
        arrays = [da.from_zarr(store_array(self._group(s, "cfh"), var, _CFH_DTYPES[var],
                                           where=f"{self._where}: subjects/{s}"))
                  for s in names]
        if arrays:
            data = da.stack(arrays, axis=0)
        else:
            data = da.zeros((0, self.n_voxels), dtype=_CFH_DTYPES[var],
                            chunks=(1, self.voxel_chunk))
        return xr.DataArray(
            data, dims=("subject", "voxel"), name=var,
            coords={"subject": np.asarray(names, dtype=object),
                    "hemisphere": ("voxel", self.hemisphere)},
        )

    # ------------------------------------------------------------------ xarray views
    def dataset(self) -> xr.Dataset:
        """The voxel table (ijk, xyz, hemisphere) and root attributes as a Dataset."""
        return xr.open_zarr(self.url, consolidated=False, zarr_format=3,
                            storage_options=self.storage_options or None)

    def datatree(self) -> xr.DataTree:
        """The whole store as a DataTree, without incomplete subjects."""
        tree = xr.open_datatree(self.url, engine="zarr", consolidated=False, zarr_format=3,
                                storage_options=self.storage_options or None)
        bad = [s for s in self.incomplete_subjects() if s in tree[SUBJECTS].children]
        if bad:
            tree[SUBJECTS] = tree[SUBJECTS].drop_nodes(bad)
        return tree

    def preprocessing_settings(self, subjects: Sequence[str] | None = None) -> dict[str, dict]:
        """Subject -> :func:`preprocessing_setting` of complete subjects (default all)."""
        names = self.subjects() if subjects is None else list(subjects)
        return {s: preprocessing_setting(self.subject_attrs(s).get("preprocessing"))
                for s in names}

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
