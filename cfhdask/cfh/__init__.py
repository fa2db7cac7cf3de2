"""CFH: kernels (block max-correlation), Dask graphs and per-subject orchestration."""
