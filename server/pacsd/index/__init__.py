"""The index database: SQLAlchemy models, engine and sessions, ingest."""
