"""Alembic is the schema authority: migrations equal the models, and they round-trip."""

from __future__ import annotations

from alembic import command

from pacsd.index.database import create_index_engine
from pacsd.index.schema import alembic_config, ensure_schema, schema_status


def test_migrations_match_the_models_and_round_trip(database_url: str) -> None:
    """Upgrade gives exactly the models' schema (alembic check); downgrade and upgrade again."""
    engine = create_index_engine(database_url, pool_size=1)
    try:
        assert schema_status(engine).empty
        status = ensure_schema(engine)  # an empty database is created at start-up
        assert status.up_to_date
        config = alembic_config(engine)
        command.check(config)  # raises when models and migrations differ
        command.downgrade(config, "base")
        assert schema_status(engine).empty
        command.upgrade(config, "head")
        assert schema_status(engine).up_to_date
    finally:
        engine.dispose()
