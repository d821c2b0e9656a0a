"""Techniques: one package per measurement technique (stages, simulators, file formats, metrics)."""
