"""Reading 4D BOLD NIfTI images from local paths or fsspec URLs; writing result maps.

Headers are read first (cheap) so that a whole cohort can be validated before
anything is written; the data are then read lazily, as a Dask array of masked
time series whose blocks each read a range of volumes.  Uncompressed ``.nii``
files are read in several blocks (each seeks to its volumes); ``.nii.gz``
files are decompressed once, in one block, volume batch by volume batch, so
memory stays bounded.  Every problem with a file is a
:class:`~cfhdask.errors.CfhdaskInputError` naming the file.

Image data are read by :func:`iter_volume_batches`: the raw bytes of
consecutive volumes go straight from the (decompressed) stream into one
reused buffer and are scaled to float32 in a single pass.  ``.nii.gz`` files
are decompressed with ISA-L (the ``isal`` package, about 3x faster than zlib)
when it is installed, else with the standard library's zlib; local ``.nii``
files are memory-mapped.  The values equal nibabel's
``get_fdata(dtype=np.float32)`` exactly (tests).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import dask
import dask.array as da
import nibabel as nib
import numpy as np

from cfhdask.errors import CfhdaskInputError
from cfhdask.grid import same_grid
from cfhdask.io.urls import url_to_fs

try:  # ISA-L's gzip: the same API as the standard library's, ~3x faster to decompress
    from isal import igzip as _gzip
    from isal.isal_zlib import error as _isal_error
except ImportError:  # pragma: no cover - isal is a dependency; zlib is the fallback
    _gzip, _isal_error = gzip, zlib.error

#: What reading a damaged file raises (truncated, corrupt deflate data, bad CRC).
_DATA_ERRORS = (OSError, EOFError, ValueError, zlib.error, _isal_error)

log = logging.getLogger(__name__)

__all__ = ["MIN_VOLUMES", "NiftiInfo", "check_bold", "check_same_grid", "iter_volume_batches",
           "load_masked", "masked_series", "open_image", "read_header", "read_volume",
           "tr_from_header", "write_nifti"]

#: Fewest volumes a series may keep after dropping the first ones.
MIN_VOLUMES = 10
#: Target bytes of (unmasked) image data read per block / batch.
_BLOCK_BYTES = 64 * 2**20

_TIME_UNITS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}


@dataclass(frozen=True)
class NiftiInfo:
    """What the header of an image says.

    Attributes
    ----------
    url : str
        Path or URL as given.
    shape : tuple of int
        Image shape (4 entries for a BOLD series).
    affine : ndarray (4, 4)
        Voxel-to-world affine (sform, else qform).
    tr : float or None
        Repetition time in seconds from ``pixdim[4]``, None when absent.
    dtype : numpy.dtype
        On-disk data type.
    nbytes : int
        Size of the image data on disk (uncompressed).
    compressed : bool
        Whether the file is gzip-compressed.
    """

    url: str
    shape: tuple[int, ...]
    affine: np.ndarray
    tr: float | None
    dtype: np.dtype
    nbytes: int
    compressed: bool

    @property
    def n_volumes(self) -> int:
        """Number of volumes (1 for a 3D image)."""
        return int(self.shape[3]) if len(self.shape) >= 4 else 1

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """The spatial shape (first three axes)."""
        return tuple(int(s) for s in self.shape[:3])


def tr_from_header(header) -> float | None:
    """Repetition time in seconds from a NIfTI header, or None.

    ``pixdim[4]`` converted with the header's time units (``sec``, ``msec``,
    ``usec``; unknown units are taken as seconds).  None when it is not a
    positive finite number.
    """
    try:
        zooms = header.get_zooms()
    except Exception:  # pragma: no cover - exotic headers
        return None
    if len(zooms) < 4:
        return None
    tr = float(zooms[3])
    if not np.isfinite(tr) or tr <= 0:
        return None
    try:
        unit = header.get_xyzt_units()[1]
    except Exception:  # pragma: no cover
        unit = "unknown"
    return tr * _TIME_UNITS.get(unit, 1.0)


def _is_gz(url: str) -> bool:
    return str(url).lower().endswith(".gz")


def _fs_path(url: str, storage_options: dict | None):
    return url_to_fs(url, storage_options)


def _image_from_stream(fileobj, url: str):
    """A NIfTI-1 or NIfTI-2 image whose data proxy reads from ``fileobj``."""
    fileobj.seek(0)
    head = fileobj.read(4)
    magic_size = int(np.frombuffer(head, dtype="<i4")[0]) if len(head) == 4 else 0
    fileobj.seek(0)
    cls = nib.Nifti2Image if magic_size in (540, 0x1C020000) else nib.Nifti1Image
    try:
        return cls.from_stream(fileobj)
    except Exception as exc:
        raise CfhdaskInputError(f"{url}: not a readable NIfTI image: {exc}") from exc


@contextlib.contextmanager
def open_image(url: str, storage_options: dict | None = None) -> Iterator:
    """Open a NIfTI (``.nii``/``.nii.gz``) for reading; yields a nibabel image.

    The image's data proxy is valid inside the ``with`` block only.  Local
    uncompressed files are memory-mapped.

    Raises
    ------
    CfhdaskInputError
        Missing file, bad URL or unreadable file (the message names it).
    """
    url = str(url)
    fs, path = _fs_path(url, storage_options)
    try:
        exists = fs.exists(path)
    except Exception as exc:
        raise CfhdaskInputError(f"{url}: cannot access: {exc}") from exc
    if not exists or fs.isdir(path):
        raise CfhdaskInputError(f"{url}: no such file")
    if "file" in np.atleast_1d(fs.protocol):
        try:
            img = nib.load(path, mmap="r", keep_file_open=True)
        except Exception as exc:
            raise CfhdaskInputError(f"{url}: not a readable NIfTI image: {exc}") from exc
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise CfhdaskInputError(f"{url}: not a NIfTI image ({type(img).__name__})")
        yield img
        return
    try:
        fobj = fs.open(path, mode="rb", compression="gzip" if _is_gz(url) else None)
    except FileNotFoundError as exc:
        raise CfhdaskInputError(f"{url}: no such file") from exc
    except Exception as exc:
        raise CfhdaskInputError(f"{url}: cannot open: {exc}") from exc
    with fobj:
        try:
            img = _image_from_stream(fobj, url)
        except (OSError, EOFError, zlib.error) as exc:
            raise CfhdaskInputError(f"{url}: not a readable NIfTI image: {exc}") from exc
        yield img


def read_header(url: str, storage_options: dict | None = None) -> NiftiInfo:
    """Read and check the header of a NIfTI file (no data is read).

    Uncompressed files are also checked for truncation (file smaller than the
    header says).

    Raises
    ------
    CfhdaskInputError
        Missing, unreadable or truncated file; bad URL.
    """
    url = str(url)
    with open_image(url, storage_options) as img:
        hdr = img.header
        shape = tuple(int(s) for s in img.shape)
        dtype = np.dtype(hdr.get_data_dtype())
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        info = NiftiInfo(url=url, shape=shape, affine=np.asarray(img.affine, dtype=np.float64),
                         tr=tr_from_header(hdr), dtype=dtype, nbytes=nbytes,
                         compressed=_is_gz(url))
        offset = int(hdr.get_data_offset())
    if not info.compressed:
        fs, path = _fs_path(url, storage_options)
        size = int(fs.size(path))
        if size < offset + nbytes:
            raise CfhdaskInputError(
                f"{url}: truncated file ({size} bytes, the header needs {offset + nbytes})")
    return info


def check_bold(info: NiftiInfo, drop_volumes: int = 0, min_volumes: int = MIN_VOLUMES) -> None:
    """Check that a header describes a usable 4D BOLD series.

    Raises
    ------
    CfhdaskInputError
        Not 4D, or fewer than ``min_volumes`` volumes left after dropping.
    """
    if len(info.shape) != 4:
        raise CfhdaskInputError(
            f"{info.url}: expected a 4D BOLD image, got {len(info.shape)}D shape {info.shape}")
    left = info.n_volumes - int(drop_volumes)
    if left < min_volumes:
        raise CfhdaskInputError(
            f"{info.url}: {info.n_volumes} volumes, {left} after dropping {drop_volumes}; "
            f"at least {min_volumes} are needed")


def check_same_grid(infos: Sequence[NiftiInfo], shape: Sequence[int] | None = None,
                    affine: np.ndarray | None = None, reference: str | None = None) -> None:
    """Check that every image lies on one grid (shape, affine within 1e-3 mm).

    Parameters
    ----------
    infos : sequence of NiftiInfo
        Headers to compare.
    shape, affine : optional
        The reference grid (e.g. an existing store's); default the first image's.
    reference : str, optional
        Name of the reference in messages.

    Raises
    ------
    CfhdaskInputError
        Naming the first image off the reference grid.
    """
    if not infos:
        return
    if shape is None or affine is None:
        shape, affine, reference = infos[0].grid_shape, infos[0].affine, infos[0].url
    for info in infos:
        if not same_grid(info.grid_shape, info.affine, shape, affine):
            raise CfhdaskInputError(
                f"{info.url}: grid {info.grid_shape} with affine "
                f"{np.round(info.affine, 3).tolist()} differs from the grid of {reference} "
                f"{tuple(shape)} with affine {np.round(np.asarray(affine), 3).tolist()}")


@dataclass(frozen=True)
class _DataLayout:
    """Where and how the voxel data of an image are stored."""

    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int
    slope: float
    inter: float

    @classmethod
    def of(cls, img) -> _DataLayout:
        """The layout nibabel's data proxy of a loaded image reads with."""
        proxy = img.dataobj  # a loaded image's header has its scaling reset; the proxy not
        if getattr(proxy, "order", "F") != "F":  # pragma: no cover - NIfTI is Fortran order
            raise CfhdaskInputError(f"{img.get_filename()}: unsupported data order")
        shape = tuple(int(s) for s in proxy.shape)
        return cls(shape=(*shape, *(1,) * (4 - len(shape))), dtype=np.dtype(proxy.dtype),
                   offset=int(proxy.offset), slope=float(proxy.slope),
                   inter=float(proxy.inter))

    @property
    def volume_items(self) -> int:
        return int(np.prod(self.shape[:3], dtype=np.int64))

    def to_float32(self, raw: np.ndarray) -> np.ndarray:
        """Raw values -> scaled float32 (``raw * slope + inter``), F order kept.

        Rounded once, as nibabel's float64 scaling cast to float32: the
        product of a raw value and a float32 slope (NIfTI-1's) is exact in
        float64, so without an intercept it is computed in one float32 pass;
        otherwise in float64.
        """
        out = np.empty(raw.shape, dtype=np.float32, order="F")
        if self.inter or float(np.float32(self.slope)) != self.slope:
            wide = np.multiply(raw, self.slope, dtype=np.float64)
            wide += self.inter
            out[...] = wide
        elif self.slope != 1.0:
            np.multiply(raw, np.float32(self.slope), out=out, casting="unsafe")
        else:
            out[...] = raw
        return out


def _readinto_full(f, view: memoryview) -> int:
    """Fill ``view`` from ``f`` (several reads when the stream returns less)."""
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


@contextlib.contextmanager
def _data_stream(url: str, storage_options: dict | None) -> Iterator:
    """A binary stream of the (decompressed) file, positioned at byte 0."""
    fs, path = _fs_path(url, storage_options)
    local = "file" in np.atleast_1d(fs.protocol)
    with contextlib.ExitStack() as stack:
        raw = open(path, "rb") if local else fs.open(path, mode="rb")  # noqa: SIM115
        stack.enter_context(raw)
        yield stack.enter_context(_gzip.GzipFile(fileobj=raw, mode="rb")) if _is_gz(url) \
            else raw


def iter_volume_batches(url: str, start: int, stop: int, batch: int,
                        storage_options: dict | None = None
                        ) -> Iterator[tuple[int, np.ndarray]]:
    """Volumes ``start:stop`` of a 4D image, ``batch`` at a time, as scaled float32.

    One sequential pass over the file: a ``.nii.gz`` is decompressed once
    (ISA-L when installed), a local ``.nii`` memory-mapped, a remote ``.nii``
    read from its first wanted volume on.  A ``.nii.gz`` read to its end has
    its gzip checksum verified.

    Parameters
    ----------
    url : str
        Path or fsspec URL of a NIfTI-1/2 image.
    start, stop : int
        Volume range.
    batch : int
        Volumes per yielded array.
    storage_options : dict, optional
        fsspec options.

    Yields
    ------
    (first volume, ndarray (X, Y, Z, n) float32, Fortran order)
        The values of nibabel's ``get_fdata`` (scaling applied) in float32.
        The array is new for each batch.

    Raises
    ------
    CfhdaskInputError
        Missing, unreadable, truncated or corrupt file (names the file and the volumes).
    """
    url = str(url)
    with open_image(url, storage_options) as img:
        layout = _DataLayout.of(img)
    start, stop, batch = int(start), int(stop), max(1, int(batch))
    n_items = layout.volume_items
    vol_bytes = n_items * layout.dtype.itemsize
    fs, path = _fs_path(url, storage_options)
    if not _is_gz(url) and "file" in np.atleast_1d(fs.protocol):
        data = np.memmap(path, dtype=layout.dtype, mode="r", offset=layout.offset,
                         shape=layout.shape, order="F")
        for b0 in range(start, stop, batch):
            yield b0, layout.to_float32(data[..., b0:min(stop, b0 + batch)])
        return
    buf = np.empty(batch * n_items, dtype=layout.dtype)
    b0 = start
    try:
        with _data_stream(url, storage_options) as f:
            f.seek(layout.offset + start * vol_bytes)
            for b0 in range(start, stop, batch):
                n = min(batch, stop - b0)
                view = memoryview(buf[: n * n_items]).cast("B")
                if _readinto_full(f, view) < len(view):
                    raise EOFError("the file ends before the last volume")
                raw = buf[: n * n_items].reshape((*layout.shape[:3], n), order="F")
                yield b0, layout.to_float32(raw)
            if _is_gz(url) and stop == layout.shape[3]:
                f.read(1)  # reach the end of the gzip member: its CRC is checked
    except _DATA_ERRORS as exc:
        raise CfhdaskInputError(
            f"{url}: unreadable or truncated data (volumes {b0}-{stop - 1}): {exc}") from exc


def read_volume(url: str, storage_options: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The whole image data (float32) and affine of a small image, e.g. a mask."""
    with open_image(url, storage_options) as img:
        try:
            data = np.asarray(img.get_fdata(dtype=np.float32))
        except Exception as exc:
            raise CfhdaskInputError(f"{url}: unreadable or truncated data: {exc}") from exc
        return data, np.asarray(img.affine, dtype=np.float64)


def _masked_volumes(url: str, ijk: np.ndarray, start: int, stop: int, batch: int,
                    storage_options: dict | None) -> np.ndarray:
    out = np.empty((len(ijk), stop - start), dtype=np.float32)
    for b0, vols in iter_volume_batches(url, start, stop, batch, storage_options):
        flat = np.ravel_multi_index(tuple(ijk.T), vols.shape[:3], order="F")
        out[:, b0 - start:b0 - start + vols.shape[3]] = \
            vols.reshape(-1, vols.shape[3], order="F")[flat]
    bad = ~np.isfinite(out)
    if bad.any():
        t = int(np.flatnonzero(bad.any(axis=0))[0]) + start
        raise CfhdaskInputError(
            f"{url}: {int(bad.sum())} NaN/Inf values inside the mask (first in volume {t})")
    return out


def load_masked(url: str, ijk: np.ndarray, start: int, stop: int,
                storage_options: dict | None = None) -> np.ndarray:
    """Masked time series of volumes ``start:stop`` of a 4D image.

    Parameters
    ----------
    url : str
        Path or fsspec URL.
    ijk : ndarray (n_voxels, 3)
        Voxel indices to extract, in the order wanted.
    start, stop : int
        Volume range.
    storage_options : dict, optional
        fsspec options.

    Returns
    -------
    ndarray (n_voxels, stop - start) float32

    Raises
    ------
    CfhdaskInputError
        Unreadable/truncated data, or NaN/Inf values in the masked voxels.
    """
    with open_image(url, storage_options) as img:
        vol_bytes = int(np.prod(img.shape[:3])) * 8
    batch = max(1, _BLOCK_BYTES // max(1, vol_bytes))
    return _masked_volumes(str(url), np.asarray(ijk), int(start), int(stop), batch,
                           storage_options)


def masked_series(info: NiftiInfo, ijk: np.ndarray, drop_volumes: int = 0,
                  storage_options: dict | None = None) -> da.Array:
    """A lazy Dask array of the masked series, dropping the first volumes.

    Parameters
    ----------
    info : NiftiInfo
        Header of the image (from :func:`read_header`).
    ijk : ndarray (n_voxels, 3)
        Voxels to extract, in store order.
    drop_volumes : int
        Initial volumes to discard.
    storage_options : dict, optional
        fsspec options.

    Returns
    -------
    dask.array.Array (n_voxels, n_volumes - drop_volumes) float32
        Chunked along time: one block per ~64 MiB of volumes for ``.nii``,
        a single block (one decompression pass) for ``.nii.gz``.
    """
    ijk = np.asarray(ijk, dtype=np.int64)
    start, stop = int(drop_volumes), info.n_volumes
    if info.compressed:
        per_block = stop - start
    else:
        vol_bytes = int(np.prod(info.grid_shape)) * max(info.dtype.itemsize, 4)
        per_block = max(1, _BLOCK_BYTES // vol_bytes)
    ijk_key = dask.delayed(ijk, pure=True)
    blocks = []
    for b0 in range(start, stop, per_block):
        b1 = min(stop, b0 + per_block)
        name = f"load-bold-{dask.base.tokenize(info.url, b0, b1, ijk, storage_options)}"
        part = dask.delayed(load_masked, pure=True)(
            info.url, ijk_key, b0, b1, storage_options, dask_key_name=name)
        blocks.append(da.from_delayed(part, shape=(len(ijk), b1 - b0), dtype=np.float32))
    return da.concatenate(blocks, axis=1)


def write_nifti(path, data: np.ndarray, affine: np.ndarray, *, dtype=None,
                description: str | None = None) -> str:
    """Write a NIfTI-1 image atomically (the one NIfTI writer of cfhdask).

    Parameters
    ----------
    path : str or path-like
        ``.nii`` or ``.nii.gz``.
    data : ndarray (3D or 4D)
    affine : ndarray (4, 4)
    dtype : numpy dtype, optional
        On-disk type (default: the data's).
    description : str, optional
        The header's ``descrip`` (79 bytes at most).

    Returns
    -------
    str
        The path written.
    """
    import os

    from cfhdask.io.atomic import atomic_write

    data = np.asarray(data if dtype is None else np.asarray(data).astype(dtype))
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm", "sec")
    if description:
        img.header["descrip"] = description.encode()[:79]
    atomic_write(path, lambda tmp: nib.save(img, tmp))
    return os.fspath(path)
