"""The service's database: SQLAlchemy models (:mod:`.models`), engines and the schema check (:mod:`.session`),
and the Alembic migrations shipped in the package (``migrations/``)."""
