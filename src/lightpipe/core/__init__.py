"""Concepts every other part of lightpipe is written in: events, scans, stages, pipelines."""
