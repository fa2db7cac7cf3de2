"""Group inference: GLM, permutations on Dask, cluster and TFCE inference, atlas labels."""
