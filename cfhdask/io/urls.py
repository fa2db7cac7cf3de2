"""The one URL resolver: local paths and fsspec URLs (``s3://``, ``gs://``, ...).

Every file cfhdask reads or writes (BOLD images, confounds tables, sidecars,
participants tables, the cohort store) is opened through these functions, with
the same ``storage_options`` (credentials, endpoint), so a remote dataset
behaves like a local folder.  Every failure is a one-line
:class:`~cfhdask.errors.CfhdaskInputError` naming the URL.  Credentials never
appear in the messages: only the URL does, and the options' secret values are
registered with :mod:`cfhdask.secrets`, which keeps them out of every error
message and log record.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import IO, Any

import fsspec

from cfhdask.errors import CfhdaskInputError
from cfhdask.secrets import register as register_secrets

__all__ = ["check_writable", "full_url", "is_local", "open_url", "read_text", "url_to_fs"]


def is_local(url: str) -> bool:
    """Whether ``url`` is a plain path or a ``file://`` URL."""
    url = str(url)
    return "://" not in url or url.startswith("file://")


def url_to_fs(url: str, storage_options: Mapping[str, Any] | None = None, *,
              what: str | None = None):
    """``(filesystem, path)`` of a path or URL.

    Parameters
    ----------
    url : str
        Local path or fsspec URL.
    storage_options : mapping, optional
        fsspec options (credentials, ``client_kwargs``...).
    what : str, optional
        What the URL is, for messages (e.g. ``"--out"``).

    Raises
    ------
    CfhdaskInputError
        An unknown protocol, a missing filesystem package or bad options.
    """
    register_secrets(storage_options)
    try:
        return fsspec.core.url_to_fs(str(url), **dict(storage_options or {}))
    except (ValueError, ImportError, TypeError) as exc:
        label = f"{what} {url}" if what else str(url)
        raise CfhdaskInputError(f"{label}: cannot open this path or URL: {exc}") from None


def full_url(fs, path: str) -> str:
    """A path found on ``fs`` as the user can pass it on (protocol kept when remote)."""
    protocols = tuple(fs.protocol) if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return path if "file" in protocols or "local" in protocols else fs.unstrip_protocol(path)


@contextlib.contextmanager
def open_url(url: str, mode: str = "rb", storage_options: Mapping[str, Any] | None = None, *,
             what: str = "file", **kwargs) -> Iterator[IO]:
    """Open a path or URL; errors name the URL.

    Parameters
    ----------
    url : str
    mode : str
        ``"rb"``, ``"rt"``, ``"wb"``...
    storage_options : mapping, optional
    what : str
        What the file is, for messages ("confounds file", "sidecar"...).
    **kwargs
        Passed to ``fs.open`` (e.g. ``compression``).
    """
    fs, path = url_to_fs(url, storage_options)
    try:
        fobj = fs.open(path, mode, **kwargs)
    except FileNotFoundError:
        raise CfhdaskInputError(f"{what} {url}: no such file") from None
    except IsADirectoryError:
        raise CfhdaskInputError(f"{what} {url}: is a folder, not a file") from None
    except Exception as exc:  # denied access, unreachable endpoint (botocore errors)
        raise CfhdaskInputError(f"{what} {url}: cannot open: {exc}") from None
    with fobj:
        yield fobj


def read_text(url: str, storage_options: Mapping[str, Any] | None = None, *,
              what: str = "file") -> str:
    """The whole text of a (small) file."""
    with open_url(url, "rb", storage_options, what=what) as f:
        try:
            return f.read().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise CfhdaskInputError(f"{what} {url}: not a text file: {exc}") from None
        except OSError as exc:
            raise CfhdaskInputError(f"{what} {url}: cannot read: {exc}") from None


def check_writable(url: str, storage_options: Mapping[str, Any] | None = None, *,
                   what: str = "store") -> None:
    """Write and remove a small probe file under ``url``, before any compute.

    Raises
    ------
    CfhdaskInputError
        One line naming ``url`` when it cannot be written (permissions, a
        read-only or full file system, denied bucket access).
    """
    import posixpath
    import uuid

    fs, path = url_to_fs(url, storage_options, what=what)
    probe = posixpath.join(path, f".cfhdask-write-probe-{uuid.uuid4().hex[:12]}")
    try:
        with fs.open(probe, "wb") as f:
            f.write(b"cfhdask")
        fs.rm(probe)
    except Exception as exc:  # OSError, botocore/aiohttp errors of object stores
        raise CfhdaskInputError(f"{what} {url}: cannot be written: "
                                f"{type(exc).__name__}: {exc}") from None
