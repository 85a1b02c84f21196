"""The admin through Django's test client: every view and action, each change via services."""

import hashlib
import json
import logging
import os
import re
from datetime import timedelta

import pytest
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from state import selectors, services
from state.admin import pagination
from state.admin.entries import delete_keys
from state.models import AccessRule, Snapshot, StateEntry, StateEvent, snapshot_storage

ENTRIES = "/admin/state/stateentry/"
EVENTS = "/admin/state/stateevent/"
SNAPSHOTS = "/admin/state/snapshot/"
RULES = "/admin/state/accessrule/"


@pytest.fixture
def admin_client(client, db):
    superuser = User.objects.create_superuser("root", password="pw-root-1")
    client.force_login(superuser)
    return client


def change_url(key: str) -> str:
    from django.contrib.admin.utils import quote

    return f"{ENTRIES}{quote(key)}/change/"


def text(response) -> str:
    return response.content.decode()


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def add_form(**fields) -> dict:
    return {"key": "", "value_text": "", "metadata_text": "{}", "ttl": "", "loaded_version": 0,
            **fields}  # fmt: skip


def edit_form(entry: StateEntry, **fields) -> dict:
    return {"value_text": json.dumps(entry.value), "metadata_text": json.dumps(entry.metadata),
            "ttl": "", "loaded_version": entry.version, **fields}  # fmt: skip


def events_of(key: str) -> list[StateEvent]:
    return list(StateEvent.objects.filter(key=key).order_by("revision"))


# --- entries: the list ----------------------------------------------------------------------


def test_entry_list_shows_the_columns(admin_client):
    services.state_set(key="market:BTC", value={"bid": 1}, ttl=600, source="feed")
    page = text(admin_client.get(ENTRIES))
    for column in ["key", "namespace", "version", "size", "updated at", "expires at", "source"]:
        assert f">{column.capitalize()}<" in page or f">{column}<" in page.lower(), column
    assert "market:BTC" in page and "feed" in page and "9\xa0bytes" in page


def test_entry_list_queries_do_not_grow_with_rows_and_skip_values(admin_client):
    def render(count: int) -> list[str]:
        StateEntry.objects.all().delete()
        services.state_bulk(
            operations=[
                {"op": "set", "key": f"k:{i:03}", "value": "x" * 1000} for i in range(count)
            ]
        )
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(ENTRIES).status_code == 200
        return [q["sql"] for q in queries.captured_queries]

    few, many = render(3), render(60)
    assert len(few) == len(many)  # no per-row queries
    listing = [sql for sql in many if "ORDER BY" in sql and "state_stateentry" in sql]
    assert listing and all('"state_stateentry"."value"' not in sql for sql in listing)


def test_entry_search_is_a_case_sensitive_key_prefix(admin_client):
    for key in ["market:BTC", "Market:ETH", "xmarket:1", "market"]:
        services.state_set(key=key, value=1)
    page = text(admin_client.get(ENTRIES, {"q": "market:"}))
    assert "market:BTC" in page
    assert "Market:ETH" not in page and "xmarket:1" not in page


def test_entry_namespace_filter(admin_client):
    for key in ["market:a", "market:b", "user:x", "counter"]:
        services.state_set(key=key, value=1)
    page = text(admin_client.get(ENTRIES))
    assert "?namespace=market" in page and "?namespace=user" in page
    market = text(admin_client.get(ENTRIES, {"namespace": "market"}))
    assert "market:a" in market and "market:b" in market and "user:x" not in market
    loose = text(admin_client.get(ENTRIES, {"namespace": "-"}))
    assert "counter" in loose and "market:a" not in loose


def test_entry_namespaces_take_one_query_per_namespace(db, django_assert_max_num_queries):
    services.state_bulk(operations=[
        {"op": "set", "key": f"{ns}:{i:03}", "value": 1}
        for ns in ["alpha", "beta", "beta.x", "gamma"] for i in range(40)
    ] + [{"op": "set", "key": "lonely", "value": 1}])  # fmt: skip
    with django_assert_max_num_queries(6):
        # Key order: "beta.x:…" sorts before "beta:…".
        assert selectors.entry_namespaces() == ["alpha", "beta.x", "beta", "gamma"]
    assert selectors.entry_namespaces(limit=2) == ["alpha", "beta.x"]


def test_entry_expiry_filter(admin_client):
    services.state_set(key="temp:1", value=1, ttl=60)
    services.state_set(key="perm:1", value=1)
    expiring = text(admin_client.get(ENTRIES, {"expiring": "yes"}))
    assert "temp:1" in expiring and "perm:1" not in expiring
    lasting = text(admin_client.get(ENTRIES, {"expiring": "no"}))
    assert "perm:1" in lasting and "temp:1" not in lasting


def test_large_table_paginator_counts_exactly_up_to_the_limit(db, monkeypatch):
    monkeypatch.setattr(pagination, "EXACT_COUNT_LIMIT", 5)
    services.state_bulk(operations=[{"op": "set", "key": f"k:{i}", "value": i} for i in range(3)])
    assert pagination.LargeTablePaginator(StateEntry.objects.all(), 2).count == 3
    services.state_bulk(operations=[{"op": "set", "key": f"m:{i}", "value": i} for i in range(20)])
    with CaptureQueriesContext(connection) as queries:
        count = pagination.LargeTablePaginator(StateEntry.objects.order_by("key"), 2).count
    if connection.vendor == "postgresql":
        # Past the limit PostgreSQL is asked for its estimate, never a full COUNT(*).
        assert count >= 6
        assert not [q for q in queries.captured_queries
                    if "COUNT(*)" in q["sql"] and "LIMIT" not in q["sql"]]  # fmt: skip
        assert any(q["sql"].startswith("EXPLAIN") for q in queries.captured_queries)
    else:
        assert count == 23


# --- entries: add, change, delete -----------------------------------------------------------


def test_add_entry_writes_through_the_service(admin_client, doorbells):
    response = admin_client.post(f"{ENTRIES}add/", add_form(
        key="feature_flag:new_ui", value_text='{\n  "on": true\n}',
        metadata_text='{"owner": "growth"}', ttl="120",
    ))  # fmt: skip
    assert response.status_code == 302, messages_of(response)
    entry = StateEntry.objects.get(key="feature_flag:new_ui")
    assert (entry.value, entry.metadata, entry.version, entry.source) == (
        {"on": True},
        {"owner": "growth"},
        1,
        "admin",
    )
    assert timedelta(seconds=115) < entry.expires_at - timezone.now() <= timedelta(seconds=120)
    [event] = events_of("feature_flag:new_ui")
    assert (event.op, event.actor, event.source) == ("set", "root", "admin")
    assert doorbells == [event.revision]


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"key": "bad key", "value_text": "1"}, "key", "Keys are 1-256 characters"),
        ({"key": "keys", "value_text": "1"}, "key", "reserved word"),
        ({"key": "a:1", "value_text": '{"a": '}, "value_text", "Not valid JSON"),
        ({"key": "a:1", "value_text": '{"a": 1, "a": 2}'}, "value_text", "appears twice"),
        ({"key": "a:1", "value_text": "NaN"}, "value_text", "NaN is not JSON"),
        ({"key": "a:1", "value_text": "null"}, "value_text", "cannot be null"),
        ({"key": "a:1", "value_text": json.dumps("x" * 200)}, "value_text", "the limit is 100"),
        ({"key": "a:1", "value_text": "1", "metadata_text": '{"n": 1}'}, "metadata_text",
         "must be a string"),
        ({"key": "a:1", "value_text": "1", "metadata_text": "[1]"}, "metadata_text",
         "Metadata must be an object"),
        ({"key": "a:1", "value_text": "1", "ttl": "0"}, "ttl", "between 1 and"),
        ({"key": "a:1", "value_text": "1", "ttl": "soon"}, "ttl", "whole number"),
    ],
)  # fmt: skip
def test_add_entry_shows_the_rules_verdict_inline(admin_client, settings, fields, field, message):
    settings.STATE_MAX_VALUE_BYTES = 100
    response = admin_client.post(f"{ENTRIES}add/", add_form(**fields))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert field in errors and message in " ".join(errors[field]), errors
    assert not StateEntry.objects.exists() and not StateEvent.objects.exists()


def test_add_entry_refuses_an_existing_key(admin_client):
    services.state_set(key="a:1", value=1)
    response = admin_client.post(f"{ENTRIES}add/", add_form(key="a:1", value_text="2"))
    assert response.status_code == 200
    assert "already exists (version 1)" in text(response)
    assert StateEntry.objects.get(key="a:1").value == 1


def test_change_form_shows_pretty_json_a_read_only_version_and_the_history_link(admin_client):
    services.state_set(key="market:BTC", value={"ask": [2, 3]}, metadata={"o": "x"})
    services.state_set(key="market:BTC", value={"ask": [2, 3]})
    page = text(admin_client.get(change_url("market:BTC")))
    assert "{\n  &quot;ask&quot;: [\n    2,\n    3\n  ]\n}" in page
    assert 'name="version"' not in page and 'name="key"' not in page
    assert re.search(r'name="loaded_version" value="2"', page)
    assert f"{EVENTS}?key=market%3ABTC" in page


def test_change_entry_value_metadata_and_ttl(admin_client, doorbells):
    entry, _ = services.state_set(key="user:alice", value={"theme": "dark"})
    response = admin_client.post(change_url("user:alice"), edit_form(
        entry, value_text='{"theme": "light"}', metadata_text='{"by": "support"}', ttl="3600",
    ))  # fmt: skip
    assert response.status_code == 302
    entry.refresh_from_db()
    assert (entry.value, entry.metadata, entry.version) == (
        {"theme": "light"},
        {"by": "support"},
        2,
    )
    assert entry.expires_at is not None
    event = events_of("user:alice")[-1]
    assert (event.old_value, event.new_value, event.actor) == (
        {"theme": "dark"},
        {"theme": "light"},
        "root",
    )
    assert list(doorbells)[-1] == event.revision


def test_change_keeps_the_expiry_when_ttl_is_empty_and_can_remove_it(admin_client):
    entry, _ = services.state_set(key="temp:1", value=1, ttl=1000)
    expires = entry.expires_at
    assert (
        admin_client.post(change_url("temp:1"), edit_form(entry, value_text="2")).status_code == 302
    )
    entry.refresh_from_db()
    assert entry.value == 2 and abs((entry.expires_at - expires).total_seconds()) <= 1.5
    response = admin_client.post(change_url("temp:1"), edit_form(entry, clear_expiry="on"))
    assert response.status_code == 302
    entry.refresh_from_db()
    assert entry.expires_at is None


def test_saving_a_stale_form_is_refused_and_overwrites_nothing(admin_client):
    entry, _ = services.state_set(key="market:ETH", value={"bid": 1})
    opened = admin_client.get(change_url("market:ETH"))
    assert 'name="loaded_version" value="1"' in text(opened)
    services.state_set(key="market:ETH", value={"bid": 5}, actor="feed")  # meanwhile: version 2

    response = admin_client.post(
        change_url("market:ETH"), edit_form(entry, value_text='{"bid": 9}')
    )
    assert response.status_code == 200
    page = text(response)
    assert "it is now at version 2 (you opened version 1)" in page
    assert '{"bid": 9}' in page.replace("&quot;", '"')  # the edit is kept in the form
    entry.refresh_from_db()
    assert (entry.value, entry.version) == ({"bid": 5}, 2)
    assert [e.actor for e in events_of("market:ETH")] == ["", "feed"]


def test_saving_a_form_of_a_deleted_entry_is_refused(admin_client):
    entry, _ = services.state_set(key="market:ETH", value=1)
    admin_client.get(change_url("market:ETH"))
    services.state_delete(key="market:ETH")
    services.state_set(key="market:ETH", value=7)  # re-created: version 1 again, but another key
    services.state_delete(key="market:ETH")
    response = admin_client.post(change_url("market:ETH"), edit_form(entry, value_text="2"))
    assert response.status_code == 302 and not StateEntry.objects.exists()  # gone: admin 404s
    response = admin_client.get(response.url)
    assert "doesn’t exist" in " ".join(messages_of(response))


def test_a_refusal_only_the_service_sees_is_reported_and_writes_nothing(admin_client):
    # The form does not check a "ttl" item inside metadata; the service does, on save.
    entry, _ = services.state_set(key="a:1", value=1)
    response = admin_client.post(change_url("a:1"), edit_form(
        entry, value_text="2", metadata_text='{"ttl": "soon"}'))  # fmt: skip
    assert response.status_code == 302
    followed = admin_client.get(response.url)
    assert any(m.startswith("Not saved: ") and "ttl" in m for m in messages_of(followed))
    entry.refresh_from_db()
    assert (entry.value, entry.version) == (1, 1)


def test_delete_entry_writes_through_the_service(admin_client):
    services.state_set(key="a:1", value=1)
    response = admin_client.post(change_url("a:1").replace("/change/", "/delete/"), {"post": "yes"})
    assert response.status_code == 302
    assert not StateEntry.objects.exists()
    event = events_of("a:1")[-1]
    assert (event.op, event.actor, event.source) == ("delete", "root", "admin")


def test_bulk_delete_action_goes_through_the_service_in_batches(admin_client, settings):
    keys = [f"k:{i}" for i in range(5)]
    services.state_bulk(operations=[{"op": "set", "key": key, "value": 1} for key in keys])
    services.state_set(key="keep", value=1)
    settings.STATE_MAX_BULK_OPERATIONS = 2
    confirm = admin_client.post(ENTRIES, {"action": "delete_selected", "_selected_action": keys})
    assert confirm.status_code == 200 and "Are you sure" in text(confirm)
    response = admin_client.post(
        ENTRIES, {"action": "delete_selected", "_selected_action": keys, "post": "yes"}
    )
    assert response.status_code == 302
    assert list(StateEntry.objects.values_list("key", flat=True)) == ["keep"]
    deletes = StateEvent.objects.filter(op="delete")
    assert sorted(deletes.values_list("key", flat=True)) == keys
    assert set(deletes.values_list("actor", flat=True)) == {"root"}


def test_delete_keys_skips_keys_that_are_gone_and_applies_the_rest(db):
    services.state_bulk(operations=[{"op": "set", "key": k, "value": 1} for k in ["a", "c"]])
    assert delete_keys(["a", "b", "c"], actor="root") == (2, 1)
    assert not StateEntry.objects.exists()


# --- the event log ---------------------------------------------------------------------------


def test_event_log_is_read_only_even_for_a_superuser(admin_client):
    services.state_set(key="a:1", value=1)
    event = StateEvent.objects.get()
    assert admin_client.get(f"{EVENTS}add/").status_code == 403
    detail = admin_client.get(f"{EVENTS}{event.pk}/change/")
    assert detail.status_code == 200 and 'name="_save"' not in text(detail)
    assert admin_client.post(f"{EVENTS}{event.pk}/change/", {"op": "delete"}).status_code == 403
    assert admin_client.post(f"{EVENTS}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    listing = text(admin_client.get(EVENTS))
    assert "action-checkbox" not in listing and 'name="action"' not in listing
    bulk = {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"}
    response = admin_client.post(EVENTS, bulk)
    assert StateEvent.objects.filter(pk=event.pk).exists(), response.status_code


def test_event_log_filters_and_newest_first(admin_client):
    services.state_set(key="market:a", value=1, source="feed", actor="svc-a")
    services.state_set(key="market:a", value=2, source="feed", actor="svc-a")
    services.state_set(key="user:bob", value={"x": 1}, source="api", actor="bob")
    services.state_delete(key="user:bob", source="api", actor="bob")

    def revisions(**params) -> list[int]:
        response = admin_client.get(EVENTS, params)
        return [event.revision for event in response.context["cl"].result_list]

    assert revisions() == [4, 3, 2, 1]
    assert revisions(op__exact="delete") == [4]
    assert revisions(source="feed") == [2, 1]
    assert revisions(actor="bob") == [4, 3]
    assert revisions(q="market:") == [2, 1]
    assert revisions(key="user:bob") == [4, 3]
    page = text(admin_client.get(EVENTS))
    assert "?source=feed" in page and "?actor=svc-a" in page
    assert '<code class="state-old">1</code> → <code class="state-new">2</code>' in page


# --- snapshots -------------------------------------------------------------------------------


@pytest.mark.usefixtures("snapshot_dir")
def test_snapshot_create_list_and_download(admin_client):
    services.state_set(key="a:1", value={"x": 1})
    assert "Take a snapshot" in text(admin_client.get(SNAPSHOTS))
    assert admin_client.get(f"{SNAPSHOTS}create/").status_code == 200
    response = admin_client.post(f"{SNAPSHOTS}create/", {"label": "before"})
    assert response.status_code == 302
    snapshot = Snapshot.objects.get()
    assert (snapshot.label, snapshot.created_by, snapshot.key_count) == ("before", "root", 1)
    listing = text(admin_client.get(SNAPSHOTS))
    assert "before" in listing and snapshot.checksum[:19] in listing
    download = admin_client.get(f"{SNAPSHOTS}{snapshot.pk}/download/")
    body = b"".join(download.streaming_content)
    assert "sha256:" + hashlib.sha256(body).hexdigest() == snapshot.checksum
    assert download["X-Checksum-SHA256"] == snapshot.checksum.removeprefix("sha256:")
    assert not StateEvent.objects.exclude(key="a:1").exists()  # a snapshot is not a change


@pytest.mark.usefixtures("snapshot_dir")
def test_snapshot_create_refuses_a_long_label(admin_client):
    response = admin_client.post(f"{SNAPSHOTS}create/", {"label": "x" * 129})
    assert response.status_code == 200 and "at most 128" in text(response)
    assert not Snapshot.objects.exists()


@pytest.mark.usefixtures("snapshot_dir")
def test_restore_confirmation_shows_the_changes_then_restores(admin_client, doorbells):
    for key, value in [("a:1", 1), ("b:1", 1), ("c:1", 1), ("d:1", 1)]:
        services.state_set(key=key, value=value)
    snapshot = services.snapshot_create(label="s")
    services.state_set(key="b:1", value=2)
    services.state_delete(key="c:1")
    services.state_set(key="e:1", value=1)
    services.state_set(key="d:1", value=1, metadata={"m": "1"})

    page = admin_client.get(f"{SNAPSHOTS}{snapshot.pk}/restore/")
    assert page.status_code == 200
    diff = page.context["diff"]
    assert (diff.added, diff.removed, diff.changed, diff.unchanged) == (1, 1, 2, 1)
    assert diff.added_keys == ["c:1"] and diff.removed_keys == ["e:1"]
    assert diff.changed_keys == [("b:1", ["value"]), ("d:1", ["metadata"])]
    assert 'id="restore-confirm"' in text(page)
    assert StateEntry.objects.count() == 4  # looking changes nothing

    response = admin_client.post(f"{SNAPSHOTS}{snapshot.pk}/restore/")
    assert response.status_code == 302
    assert dict(StateEntry.objects.values_list("key", "value")) == {
        "a:1": 1,
        "b:1": 1,
        "c:1": 1,
        "d:1": 1,
    }
    restore = StateEvent.objects.get(op="restore")
    assert (restore.actor, restore.source) == ("root", "admin")
    assert list(doorbells)[-1] == restore.revision


@pytest.mark.usefixtures("snapshot_dir")
def test_restore_preview_lists_a_bounded_number_of_keys(db):
    snapshot = services.snapshot_create()
    services.state_bulk(
        operations=[{"op": "set", "key": f"k:{i:02}", "value": i} for i in range(30)]
    )
    preview = selectors.snapshot_restore_preview(snapshot_id=snapshot.pk, limit=5, batch_size=7)
    assert preview.diff.removed == 30 and preview.diff.removed_keys == [
        f"k:{i:02}" for i in range(5)
    ]
    assert preview.store_revision == selectors.store_revision()


@pytest.mark.usefixtures("snapshot_dir")
def test_restore_of_a_damaged_snapshot_is_refused_and_changes_nothing(admin_client):
    services.state_set(key="a:1", value=1)
    snapshot = services.snapshot_create()
    path = snapshot_storage().path(snapshot.file.name)
    with open(path, "r+b") as damaged:
        damaged.seek(30)
        damaged.write(b"\x00\x01\x02")
    page = admin_client.get(f"{SNAPSHOTS}{snapshot.pk}/restore/")
    assert page.status_code == 200 and "cannot be restored" in text(page)
    assert 'id="restore-confirm"' not in text(page)
    response = admin_client.post(f"{SNAPSHOTS}{snapshot.pk}/restore/")
    assert "Not restored" in " ".join(messages_of(admin_client.get(response.url)))
    assert not StateEvent.objects.filter(op="restore").exists()


@pytest.mark.usefixtures("snapshot_dir")
def test_restore_action_leads_to_the_confirmation_page(admin_client):
    first, second = services.snapshot_create(), services.snapshot_create()
    response = admin_client.post(SNAPSHOTS, {"action": "restore_selected",
                                             "_selected_action": [first.pk]})  # fmt: skip
    assert response.status_code == 302 and response.url == f"{SNAPSHOTS}{first.pk}/restore/"
    both = admin_client.post(SNAPSHOTS, {"action": "restore_selected",
                                         "_selected_action": [first.pk, second.pk]})  # fmt: skip
    assert "exactly one" in " ".join(messages_of(admin_client.get(both.url)))


@pytest.mark.usefixtures("snapshot_dir")
def test_snapshot_delete_goes_through_the_service(admin_client, django_capture_on_commit_callbacks):
    snapshot = services.snapshot_create()
    path = snapshot_storage().path(snapshot.file.name)
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(f"{SNAPSHOTS}{snapshot.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not Snapshot.objects.exists()
    assert not os.path.exists(path)


# --- access rules ------------------------------------------------------------------------------


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


def test_access_rule_changes_are_audited_once_each(admin_client, caplog):
    group = Group.objects.create(name="pricing")
    other = Group.objects.create(name="risk")
    caplog.set_level(logging.INFO, logger="state.audit")
    admin_client.post(f"{RULES}add/", {"group": group.pk, "prefix": "team:", "access": "read"})
    rule = AccessRule.objects.get()
    admin_client.post(f"{RULES}{rule.pk}/change/",
                      {"group": other.pk, "prefix": "team:", "access": "write"})  # fmt: skip
    rule.refresh_from_db()
    assert (rule.group, rule.access) == (other, "write")
    history = text(admin_client.get(f"{RULES}{rule.pk}/history/"))
    assert "Changed group from &#x27;pricing&#x27; to &#x27;risk&#x27;" in history
    admin_client.post(f"{RULES}{rule.pk}/delete/", {"post": "yes"})
    assert not AccessRule.objects.exists()

    fields = ["action_flag", "user__username", "object_id", "change_message"]
    log = list(LogEntry.objects.order_by("id").values_list(*fields))
    assert log == [
        (ADDITION, "root", str(rule.pk), "Added: group 'pricing' may read 'team:*'."),
        (CHANGE, "root", str(rule.pk),
         "Changed group from 'pricing' to 'risk'; access from 'read' to 'write'."),
        (DELETION, "root", str(rule.pk), "Deleted: group 'risk' may write 'team:*'."),
    ]  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if r.name == "state.audit"]
    assert len(lines) == 3 and all("by root" in line for line in lines)


def test_access_rule_form_shows_the_services_verdict_inline(admin_client):
    group = Group.objects.create(name="pricing")
    bad = admin_client.post(
        f"{RULES}add/", {"group": group.pk, "prefix": "team x", "access": "read"}
    )
    assert bad.status_code == 200 and "prefix is the start of a key" in text(bad)
    admin_client.post(f"{RULES}add/", {"group": group.pk, "prefix": "team:", "access": "read"})
    again = admin_client.post(
        f"{RULES}add/", {"group": group.pk, "prefix": "team:", "access": "read"}
    )
    assert again.status_code == 200 and "already exists" in text(again)
    assert AccessRule.objects.count() == 1 and LogEntry.objects.count() == 1


def test_access_rule_bulk_delete_goes_through_the_service(admin_client):
    group = Group.objects.create(name="pricing")
    rules = [AccessRule.objects.create(group=group, prefix=p, access="read") for p in "ab"]
    admin_client.post(RULES, {"action": "delete_selected", "post": "yes",
                              "_selected_action": [r.pk for r in rules]})  # fmt: skip
    assert not AccessRule.objects.exists()
    assert LogEntry.objects.filter(action_flag=DELETION).count() == 2


# --- the live page -----------------------------------------------------------------------------


def test_live_page_is_for_staff_and_linked_from_the_index(admin_client, client, user):
    services.state_set(key="market:a", value=1)
    page = admin_client.get("/admin/state/live/")
    assert page.status_code == 200
    body = text(page)
    assert 'src="/static/state/live.js"' in body and "/static/state/admin.css" in body
    config = json.loads(re.search(r'id="state-live-config"[^>]*>(.*?)</script>', body).group(1))
    assert config["stream_path"] == "/api/v1/state/events"
    assert config["stats_url"] == "/api/v1/state/stats"
    assert len(config["every_key"]) == 62
    assert page.context["stats"]["total_keys"] == 1
    assert 'href="/admin/state/live/"' in text(admin_client.get("/admin/"))

    admin_client.logout()
    assert admin_client.get("/admin/state/live/").url.startswith("/admin/login/")
    client.force_login(user)  # not staff
    assert client.get("/admin/state/live/").status_code == 302
