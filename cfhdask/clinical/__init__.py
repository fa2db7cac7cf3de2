"""Clinical statistics: Table 1 and partial correlations with cluster CFH."""
