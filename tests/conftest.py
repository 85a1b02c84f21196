"""Shared fixtures: users and API clients per role, and the events a commit would broadcast."""

import os
import secrets
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from state import events as state_events
from state import hotkeys
from state.models import AccessRule

# The suite is not a deployment, but config/asgi.py refuses the embedded default key when DEBUG
# is false: one random key for this process (which imports config.asgi) and every server it starts.
if not os.environ.get("SECRET_KEY"):
    os.environ["SECRET_KEY"] = settings.SECRET_KEY = secrets.token_urlsafe(50)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    """Hash fixture passwords cheaply: PBKDF2 made each user fixture cost ~0.2 s."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _tracking_off(settings) -> None:
    """No request or session records in process unless a test asks (tests/sessions_tracking).

    The product tracks by default; here the records would add keys and events to every test
    that counts them, and the tracker's writer thread commits on its own connection, outside
    the test's transaction.
    """
    settings.STATE_TRACK_REQUESTS = False
    settings.STATE_PROPAGATE_STATE = False


@pytest.fixture(autouse=True)
def _no_hot_keys() -> Iterator[None]:
    """Start every test with no access counts (they live in the process, or in Redis)."""
    hotkeys.reset()
    yield


def _client(user: User | None) -> APIClient:
    client = APIClient()
    if user is not None:
        token, _ = Token.objects.get_or_create(user=user)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token.key}")
    return client


@pytest.fixture
def staff_user(db) -> User:
    return User.objects.create_user("staffer", password="pw-staffer-1", is_staff=True)


@pytest.fixture
def user(db) -> User:
    return User.objects.create_user("alice", password="pw-alice-1")


@pytest.fixture
def writer_user(db) -> User:
    """A non-staff user whose group may write under `team:` and read under `reports:`."""
    group = Group.objects.create(name="team")
    AccessRule.objects.create(group=group, prefix="team:", access=AccessRule.Access.WRITE)
    AccessRule.objects.create(group=group, prefix="reports:", access=AccessRule.Access.READ)
    member = User.objects.create_user("bob", password="pw-bob-1")
    member.groups.add(group)
    return member


@pytest.fixture
def staff_client(staff_user) -> APIClient:
    return _client(staff_user)


@pytest.fixture
def user_client(user) -> APIClient:
    return _client(user)


@pytest.fixture
def writer_client(writer_user) -> APIClient:
    return _client(writer_user)


@pytest.fixture
def anon_client(db) -> APIClient:
    return _client(None)


class Doorbells:
    """The revisions commit would ring the doorbell for, read live from the test transaction's
    on-commit queue: one per committed transaction, its last revision."""

    def __init__(self) -> None:
        self._start = len(connection.run_on_commit)

    def __eq__(self, other: object) -> bool:
        return list(self) == other

    def __iter__(self) -> Iterator[int]:
        return iter(
            [
                callback.args[0]
                for _, callback, _ in connection.run_on_commit[self._start :]
                if getattr(callback, "func", None) is state_events.broadcast
            ]
        )

    def __repr__(self) -> str:
        return repr(list(self))


@pytest.fixture
def doorbells(db) -> Doorbells:
    """Capture the doorbells the test's (never committed) transaction would ring on commit."""
    return Doorbells()
