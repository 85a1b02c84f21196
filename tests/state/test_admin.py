import pytest
from django.contrib.auth.models import Group, User

from state import services
from state.models import AccessRule


@pytest.fixture
def admin_client(client, db):
    superuser = User.objects.create_superuser("root", password="pw-root-1")
    client.force_login(superuser)
    return client


def test_admin_lists_entries_and_events_read_only(admin_client):
    services.state_set(key="market:ETH", value={"bid": 1}, actor="t")
    page = admin_client.get("/admin/state/stateentry/")
    assert page.status_code == 200 and b"market:ETH" in page.content
    assert admin_client.get("/admin/state/stateentry/add/").status_code == 403
    assert admin_client.get("/admin/state/stateevent/").status_code == 200


def test_admin_access_rule_grants_group_write(admin_client, user_client, user):
    group = Group.objects.create(name="pricing")
    user.groups.add(group)
    assert user_client.put("/api/v1/state/team:x", {"value": 1}, format="json").status_code == 403

    response = admin_client.post(
        "/admin/state/accessrule/add/",
        {"group": group.pk, "prefix": "team:", "access": "write"},
    )
    assert response.status_code == 302
    assert AccessRule.objects.get().created_by.username == "root"
    assert user_client.put("/api/v1/state/team:x", {"value": 1}, format="json").status_code == 201
