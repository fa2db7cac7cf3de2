"""The package version (single source: the installed distribution)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cfhdask")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0+unknown"
