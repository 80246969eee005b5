"""Alembic is the schema authority: migrations equal the models, and they round-trip."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

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


def test_cluster_node_associations_keeps_the_previous_releases_rows(database_url: str) -> None:
    """0007 adds `cluster_node.associations` as a nullable column: a node row written by the
    previous release (0006) survives the upgrade with the count NULL (not known), and the
    downgrade drops only the column."""
    engine = create_index_engine(database_url, pool_size=1)
    row = {"name": "node-a", "pid": 1, "version": "old", "moment": "2026-01-01T00:00:00+00:00"}
    insert = text(
        "INSERT INTO cluster_node (pk, name, pid, version, started_at, last_seen, heartbeat,"
        " http_url, dicom_address) VALUES (1, :name, :pid, :version, :moment, :moment, 5.0,"
        " '', 'host:104')"
    )
    try:
        config = alembic_config(engine)
        command.upgrade(config, "0006")
        with engine.begin() as connection:
            connection.execute(insert, row)
        command.upgrade(config, "0007")
        with engine.connect() as connection:
            kept = connection.execute(text("SELECT name, associations FROM cluster_node")).all()
        assert [tuple(r) for r in kept] == [("node-a", None)]
        command.downgrade(config, "0006")
        with engine.connect() as connection:
            names = connection.execute(text("SELECT name FROM cluster_node")).scalars().all()
        assert names == ["node-a"]
    finally:
        engine.dispose()
