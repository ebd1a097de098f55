"""Alembic environment: the target is bds_service.models, the URL comes from the settings.

The URL is, in order: the ``sqlalchemy.url`` main option (set by ``bds_service.db.
upgrade_database`` and by tests), else ``BDS_DATABASE_URL`` / the embedded default.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext

from bds_service.db import make_engine, missing_sqlite_file, normalize_database_url
from bds_service.models import Base, StrEnumString, UTCDateTime
from bds_service.settings import Settings

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    return normalize_database_url(url or Settings().resolved_database_url)


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    # Migrations must not import the models (they are frozen history); UTCDateTime is a
    # DateTime(timezone=True) to the database, a StrEnumString a String of its length.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and isinstance(obj, StrEnumString):
        return f"sa.String(length={obj.impl.length})"
    return False


def run_migrations_offline() -> None:
    """Emit SQL for the migrations without a database connection."""
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        compare_type=True,
        render_as_batch=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def _command_name() -> str | None:
    """The alembic command run from the command line (None when called from code)."""
    command = getattr(getattr(config, "cmd_opts", None), "cmd", None)
    return getattr(command[0], "__name__", None) if command else None


def run_migrations_online() -> None:
    """Apply the migrations over a live connection."""
    url = _database_url()
    missing = missing_sqlite_file(url)
    if missing is not None and _command_name() not in (None, "upgrade", "stamp"):
        # `alembic check` (or current, downgrade, ...) on a database that does not exist:
        # connecting would leave an empty SQLite file and its folder behind.
        raise SystemExit(
            f"error: there is no database at {missing}; set BDS_DATABASE_URL (or BDS_DATA_DIR) "
            "to the deployment's database, or create it with `bds migrate`"
        )
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            compare_type=True,
            render_item=_render_item,
            # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
