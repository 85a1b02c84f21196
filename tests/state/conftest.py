"""Fixtures for the snapshot, command and worker tests."""

import shutil
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection


@pytest.fixture
def snapshot_dir(settings, tmp_path) -> Path:
    """Keep every snapshot file a test writes in its own directory."""
    location = tmp_path / "snapshots"
    settings.STORAGES = {
        **settings.STORAGES,
        "snapshots": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(location)},
        },
    }
    return location


# --- a file-backed database for tests with several connections ------------------------------
# The SQLite test database is in memory with a shared cache, where concurrent connections get
# "table is locked" instead of WAL's snapshot isolation. Tests that need real concurrency (or
# a subprocess sharing the database) switch the connection to a migrated SQLite file in WAL
# mode, as production runs. On PostgreSQL the test database already is one.


@pytest.fixture(scope="session")
def _migrated_sqlite_file(tmp_path_factory, django_db_setup, django_db_blocker) -> Path | None:
    if connection.vendor != "sqlite":
        return None
    path = tmp_path_factory.mktemp("snap-db") / "template.sqlite3"
    with django_db_blocker.unblock(), _connection_to(path):
        call_command("migrate", verbosity=0)
    return path


class _connection_to:
    """Point the default connection at another SQLite file, keeping the in-memory one alive."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        self.name = connection.settings_dict["NAME"]
        self.held = connection.connection
        connection.connection = None
        connection.settings_dict["NAME"] = str(self.path)

    def __exit__(self, *exc) -> None:
        connection.close()
        connection.settings_dict["NAME"] = self.name
        connection.connection = self.held


@pytest.fixture
def shared_db(_migrated_sqlite_file, tmp_path):
    """Yield a DATABASE_URL that other threads and processes share with this test.

    Use with @pytest.mark.django_db(transaction=True, serialized_rollback=True).
    """
    if connection.vendor != "sqlite":
        db = connection.settings_dict
        yield f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        return
    path = tmp_path / "shared.sqlite3"
    shutil.copy(_migrated_sqlite_file, path)
    with _connection_to(path):
        yield f"sqlite:///{path}"
