"""Alembic is the schema authority: migrations equal the models, and they round-trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from sqlalchemy import Engine, inspect, make_url, text

from pacsd.index.database import create_index_engine
from pacsd.index.schema import HEAD_REVISION, alembic_config, ensure_schema, schema_status
from tests.conftest import index_url


def test_migrations_match_the_models_and_round_trip(database_url: str) -> None:
    """Upgrade gives exactly the models' schema (alembic check); downgrade and upgrade again."""
    engine = create_index_engine(database_url, pool_size=1)
    try:
        assert schema_status(engine).empty
        config = alembic_config(engine)
        command.upgrade(config, "head")
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


def test_a_new_database_gets_the_migrations_schema_without_them(
    database_url: str, tmp_path: Path
) -> None:
    """Start-up creates an empty database's schema from the models and stamps it at the newest
    revision (fast, no Alembic): tables, columns, keys and indexes (partial ones' conditions
    too) are exactly those the migrations build, and later migrations apply to it."""
    created = create_index_engine(database_url, pool_size=1)
    backend = make_url(database_url).get_backend_name()
    try:
        status = ensure_schema(created)  # what the daemon does with an empty database
        assert status.up_to_date
        assert status.current == (HEAD_REVISION,)
        assert schema_status(created).up_to_date
        command.check(alembic_config(created))
        with index_url(backend, tmp_path / "migrated") as migrated_url:
            migrated = create_index_engine(migrated_url, pool_size=1)
            try:
                command.upgrade(alembic_config(migrated), "head")
                assert _described(created) == _described(migrated)
            finally:
                migrated.dispose()
        command.downgrade(alembic_config(created), "base")  # the migrations' own way back
        assert schema_status(created).empty
    finally:
        created.dispose()


def _described(engine: Engine) -> dict[str, Any]:
    """Every table's columns, keys and indexes, in an order that does not depend on how they
    were made (a column added by a later migration comes last in its table)."""
    inspector = inspect(engine)
    tables: dict[str, Any] = {}
    for table in sorted(inspector.get_table_names()):
        columns = inspector.get_columns(table)
        tables[table] = {
            "columns": sorted(
                (c["name"], str(c["type"]), c["nullable"], str(c.get("default"))) for c in columns
            ),
            "primary key": inspector.get_pk_constraint(table)["constrained_columns"],
            "foreign keys": sorted(
                (
                    tuple(fk["constrained_columns"]),
                    fk["referred_table"],
                    tuple(fk["referred_columns"]),
                    str(sorted(fk.get("options", {}).items())),
                )
                for fk in inspector.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (
                    str(index["name"]),
                    tuple(str(name) for name in index["column_names"]),
                    bool(index["unique"]),
                    # a partial index's condition, as its SQL text
                    sorted((k, str(v)) for k, v in index.get("dialect_options", {}).items()),
                )
                for index in inspector.get_indexes(table)
            ),
            "unique": sorted(
                tuple(constraint["column_names"])
                for constraint in inspector.get_unique_constraints(table)
            ),
        }
    return tables
