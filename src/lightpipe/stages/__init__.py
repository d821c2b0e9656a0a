"""Built-in stages for area-detector frames: statistics, corrections, geometry, scalars, profiles."""
