"""Simulated cohorts on the MNI grid, for the demo, the tests and the benchmarks."""
