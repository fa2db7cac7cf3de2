"""I/O: NIfTI reading (local paths and fsspec URLs), the Zarr cohort store, NIfTI export."""
