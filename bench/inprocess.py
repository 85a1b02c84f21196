"""Set Django up inside a bench script (no server): a fresh database, migrated."""

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent


def fresh_postgres_database(url: str) -> None:
    """Drop and create the PostgreSQL database `url` names (the bench's own)."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    with psycopg.connect(parts._replace(path="/postgres").geturl(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def setup(database_url: str, *, secret_name: str, **env: str) -> None:
    """Run Django in this process on `database_url` (a PostgreSQL one recreated), migrated,
    with `env` set first (settings read the environment once)."""
    os.environ.update(DATABASE_URL=database_url, **env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("SECRET_KEY", f"bench-{secret_name}-" + "x" * 50)
    sys.path.insert(0, str(ROOT))
    if database_url.startswith("postgres"):
        fresh_postgres_database(database_url)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
