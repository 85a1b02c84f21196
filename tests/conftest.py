"""Shared fixtures: users and API clients per role, and the events a commit would broadcast."""

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from state import events as state_events
from state.models import AccessRule


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    """Hash fixture passwords cheaply: PBKDF2 made each user fixture cost ~0.2 s."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


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


class PublishedEvents:
    """The events that commit would broadcast, read live from the test transaction's queue."""

    def __init__(self) -> None:
        self._start = len(connection.run_on_commit)

    @property
    def events(self) -> list[state_events.Event]:
        return [
            event
            for _, callback, _ in connection.run_on_commit[self._start :]
            if getattr(callback, "func", None) is state_events.broadcast
            for event in callback.args[0]
        ]

    def __len__(self) -> int:
        return len(self.events)

    def __getitem__(self, index: int) -> state_events.Event:
        return self.events[index]

    def __iter__(self) -> Iterator[state_events.Event]:
        return iter(self.events)


@pytest.fixture
def published_events(db) -> PublishedEvents:
    """Capture what the test's (never committed) transaction would broadcast on commit."""
    return PublishedEvents()
