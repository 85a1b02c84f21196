"""Access rule services: validated, effective at once for the API, and audited with the actor."""

import logging

import pytest
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.models import Group, User

from state import access, services
from state.exceptions import NotFound, ValidationFailed
from state.models import AccessRule


@pytest.fixture
def boss(db) -> User:
    return User.objects.create_user("boss", is_staff=True)


@pytest.fixture
def group(db) -> Group:
    return Group.objects.create(name="pricing")


def test_create_grants_and_records_who(boss, group, user, caplog):
    user.groups.add(group)
    caplog.set_level(logging.INFO, logger="state.audit")
    rule = services.access_rule_create(group=group, prefix="team:", access="write", actor=boss)
    assert rule.created_by == boss
    assert access.can_write(User.objects.get(pk=user.pk), "team:x")
    entry = LogEntry.objects.get()
    assert (entry.user, entry.action_flag, entry.object_id) == (boss, ADDITION, str(rule.pk))
    assert entry.get_edited_object() == rule
    assert [r.getMessage() for r in caplog.records] == [
        f"access rule {rule.pk} added by boss: Added: group 'pricing' may write 'team:*'."
    ]


@pytest.mark.parametrize("prefix", ["", "team x", "-team", "x" * 257, None])
def test_create_refuses_a_prefix_no_key_can_start_with(boss, group, prefix):
    with pytest.raises(ValidationFailed) as error:
        services.access_rule_create(group=group, prefix=prefix, access="read", actor=boss)
    assert error.value.details == {"field": "prefix"}
    assert not AccessRule.objects.exists() and not LogEntry.objects.exists()


def test_create_refuses_unknown_access_and_duplicates(boss, group):
    with pytest.raises(ValidationFailed):
        services.access_rule_create(group=group, prefix="a:", access="admin", actor=boss)
    services.access_rule_create(group=group, prefix="a:", access="read", actor=boss)
    with pytest.raises(ValidationFailed, match="already exists"):
        services.access_rule_create(group=group, prefix="a:", access="read", actor=boss)
    assert AccessRule.objects.count() == 1 and LogEntry.objects.count() == 1


def test_update_records_what_changed_from_what(boss, group):
    rule = services.access_rule_create(group=group, prefix="a:", access="read", actor=boss)
    services.access_rule_update(rule_id=rule.pk, group=group, prefix="b:", access="read",
                                actor=boss)  # fmt: skip
    unchanged = services.access_rule_update(
        rule_id=rule.pk, group=group, prefix="b:", access="read", actor=boss
    )
    assert unchanged.prefix == "b:"
    assert list(LogEntry.objects.order_by("id").values_list("action_flag", "change_message")) == [
        (ADDITION, "Added: group 'pricing' may read 'a:*'."),
        (CHANGE, "Changed prefix from 'a:' to 'b:'."),
    ]  # a save that changes nothing records nothing


def test_delete_revokes_at_once_and_the_record_outlives_the_rule(boss, group, user):
    user.groups.add(group)
    rule = services.access_rule_create(group=group, prefix="team:", access="read", actor=boss)
    services.access_rule_delete(rule_id=rule.pk, actor=boss)
    assert not access.can_read(User.objects.get(pk=user.pk), "team:x")
    deletion = LogEntry.objects.get(action_flag=DELETION)
    assert deletion.object_id == str(rule.pk) and "may read 'team:*'" in deletion.change_message
    with pytest.raises(NotFound):
        services.access_rule_delete(rule_id=rule.pk, actor=boss)
    with pytest.raises(NotFound):
        services.access_rule_update(rule_id=rule.pk, group=group, prefix="a:", access="read",
                                    actor=boss)  # fmt: skip
