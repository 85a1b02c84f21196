"""manage.py create_user: a user with a working API token, the token alone on stdout."""

import io

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from state import services


def create_user(*args: str) -> str:
    out = io.StringIO()
    call_command("create_user", *args, stdout=out)
    return out.getvalue().strip()


def test_creates_a_non_staff_user_whose_token_reads_its_own_keys(db):
    token = create_user("carol")
    user = User.objects.get(username="carol")
    assert not user.is_staff and not user.has_usable_password()
    services.state_set(key="user:carol:prefs", value={"theme": "dark"})
    services.state_set(key="secret", value=1)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.get("/api/v1/state/user:carol:prefs").json()["data"]["value"] == {"theme": "dark"}
    assert client.get("/api/v1/state/secret").status_code == 403


def test_staff_and_groups(db):
    create_user("dave", "--staff", "--group", "ops", "--group", "web")
    user = User.objects.get(username="dave")
    assert user.is_staff
    assert sorted(user.groups.values_list("name", flat=True)) == ["ops", "web"]


def test_an_existing_user_is_refused(db):
    create_user("erin")
    with pytest.raises(CommandError, match="already exists"):
        create_user("erin")


def test_an_invalid_username_is_refused(db):
    with pytest.raises(CommandError, match="Invalid username"):
        create_user("no spaces please")
    assert not User.objects.exists()
