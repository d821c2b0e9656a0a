"""The routers of ``/api/v1``: one module per resource (pipelines, datasets, jobs, results, topology, tokens)."""
