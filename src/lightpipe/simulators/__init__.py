"""Simulators: realistic data with known ground truth, registered as sources."""
