"""The start-up schema check's shortcut (index/schema.HEAD_REVISION) names Alembic's head."""

from __future__ import annotations

from alembic.config import Config
from alembic.script import ScriptDirectory

from pacsd.index.schema import HEAD_REVISION, migrations_directory


def test_head_revision_is_the_newest_migration() -> None:
    """A new migration must update HEAD_REVISION, or start-up would refuse or skip it."""
    config = Config()
    config.set_main_option("script_location", str(migrations_directory()))
    assert ScriptDirectory.from_config(config).get_heads() == [HEAD_REVISION]
