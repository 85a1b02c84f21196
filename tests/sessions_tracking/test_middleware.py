"""The tracking middleware in process: correlation ids, request, completion and session records."""

import gzip
import json
import logging
import uuid

import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from sessions_tracking import correlation, redaction
from sessions_tracking import services as tracking_services
from sessions_tracking.services import parse_iso
from state import selectors, services
from state.models import StateEntry, StateEvent

CID = "X-Correlation-ID"


def entries(prefix: str) -> dict[str, StateEntry]:
    return {e.key: e for e in StateEntry.objects.filter(key__startswith=prefix)}


def ttl_of(entry: StateEntry) -> float:
    return (entry.expires_at - entry.updated_at).total_seconds()


# --- correlation ids ------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["HTTP_X_CORRELATION_ID", "HTTP_X_REQUEST_ID"])
def test_valid_incoming_id_is_kept_and_echoed(staff_client, header):
    response = staff_client.get("/api/v1/state/absent", **{header: "abc-123_X.9"})
    assert response.status_code == 404
    assert response[CID] == "abc-123_X.9"


def test_correlation_id_wins_over_request_id(staff_client):
    response = staff_client.get(
        "/healthz", HTTP_X_CORRELATION_ID="from-correlation", HTTP_X_REQUEST_ID="from-request"
    )
    assert response[CID] == "from-correlation"


def test_an_invalid_correlation_id_falls_back_to_a_valid_request_id(staff_client):
    response = staff_client.get(
        "/healthz", HTTP_X_CORRELATION_ID="has space", HTTP_X_REQUEST_ID="req-7"
    )
    assert response[CID] == "req-7"


@pytest.mark.parametrize(
    "bad",
    [
        "",  # empty
        "x" * 129,  # too long
        "has space",
        "slash/inside",
        "colon:inside",  # a key character, but not a correlation id one
        "ünïcode",
        "semi;colon",
        "new\nline",
    ],
)
def test_invalid_incoming_ids_are_replaced_by_a_new_uuid(staff_client, bad):
    response = staff_client.get("/healthz", HTTP_X_CORRELATION_ID=bad, HTTP_X_REQUEST_ID=bad)
    echoed = response[CID]
    assert echoed != bad
    assert str(uuid.UUID(echoed)) == echoed


@pytest.mark.parametrize("incoming", ["-leading-dash", ".leading.dot", "_under"])
def test_ids_that_cannot_start_a_key_still_name_a_request_record(tracking, staff_client, incoming):
    response = staff_client.get("/api/v1/state/global:absent", HTTP_X_CORRELATION_ID=incoming)
    assert response[CID] == incoming
    tracking.flush()
    assert selectors.entry_get(key=f"request:{incoming}:completion").value["status"] == 404


def test_longest_valid_id_is_kept(staff_client):
    longest = "a" * 128
    assert staff_client.get("/healthz", HTTP_X_CORRELATION_ID=longest)[CID] == longest


def test_each_request_without_an_id_gets_a_fresh_uuid(staff_client):
    echoed = {staff_client.get("/healthz")[CID] for _ in range(5)}
    assert len(echoed) == 5
    assert all(str(uuid.UUID(value)) == value for value in echoed)


@pytest.mark.urls("tests.sessions_tracking.urls")
def test_views_see_the_id_and_it_is_reset_after_the_request(client):
    response = client.get("/test/correlation", HTTP_X_REQUEST_ID="seen-by-view")
    assert response.json() == {"correlation_id": "seen-by-view"}
    # The test client runs the request in this thread: a value left set would leak into the
    # next request a pool thread serves.
    assert correlation.get() is None


@pytest.mark.urls("tests.sessions_tracking.urls")
def test_the_id_is_echoed_on_a_500(db):
    response = APIClient(raise_request_exception=False).get(
        "/test/broken", HTTP_X_CORRELATION_ID="on-a-500"
    )
    assert response.status_code == 500
    assert response[CID] == "on-a-500"


def test_the_id_is_echoed_on_error_envelopes(anon_client, staff_client):
    responses = [
        anon_client.get("/api/v1/state/k", HTTP_X_CORRELATION_ID="e401"),
        staff_client.get("/api/v1/state/no/such/route", HTTP_X_CORRELATION_ID="e404"),
        staff_client.put(
            "/api/v1/state/k", b"{", content_type="application/json", HTTP_X_CORRELATION_ID="e400"
        ),  # fmt: skip
        staff_client.post("/api/v1/state/k", {}, format="json", HTTP_X_CORRELATION_ID="e405"),
    ]
    assert [r.status_code for r in responses] == [401, 404, 400, 405]
    assert [r[CID] for r in responses] == ["e401", "e404", "e400", "e405"]


# --- request and completion records ---------------------------------------------------------


def test_request_and_completion_records_with_status_and_duration(tracking, staff_client):
    services.state_set(key="global:k", value=1)
    ok = staff_client.get("/api/v1/state/global:k?include_metadata=true", HTTP_USER_AGENT="t/1")
    missing = staff_client.get("/api/v1/state/global:absent")
    created = staff_client.put("/api/v1/state/global:new", {"value": 2}, format="json")
    assert StateEntry.objects.filter(key__startswith="request:").count() == 0  # buffered only

    tracking.flush()

    for response, method, uri, status in [
        (ok, "GET", "/api/v1/state/global:k?include_metadata=true", 200),
        (missing, "GET", "/api/v1/state/global:absent", 404),
        (created, "PUT", "/api/v1/state/global:new", 201),
    ]:
        key = f"request:{response[CID]}"
        record = selectors.entry_get(key=key)
        completion = selectors.entry_get(key=key + ":completion")
        assert set(record.value) == {"method", "uri", "started_at", "headers"}
        assert (record.value["method"], record.value["uri"]) == (method, uri)
        assert record.value["started_at"].endswith("Z")
        assert set(completion.value) == {"completed_at", "status", "duration_ms"}
        assert completion.value["status"] == status
        assert 0 < completion.value["duration_ms"] < 10_000
        assert parse_iso(completion.value["completed_at"]) >= parse_iso(record.value["started_at"])
        assert record.source == completion.source == "tracking"
        assert ttl_of(record) == ttl_of(completion) == 300
    assert selectors.entry_get(key=f"request:{ok[CID]}").value["headers"]["User-Agent"] == "t/1"
    # Audited like any change: a `set` event each, by the tracking actor.
    events = StateEvent.objects.filter(key__startswith="request:")
    assert events.count() == 6
    assert set(events.values_list("actor", flat=True)) == {"tracking"}


def test_request_ttl_comes_from_settings(tracking, staff_client, settings):
    settings.STATE_REQUEST_TTL_SECS = 42
    response = staff_client.get("/api/v1/state/global:absent")
    tracking.flush()
    assert ttl_of(selectors.entry_get(key=f"request:{response[CID]}")) == 42


def test_prefixes_come_from_settings(tracking, staff_client, staff_user, settings):
    settings.STATE_REQUEST_PREFIX = "trace:"
    settings.STATE_SESSION_PREFIX = "sess:"
    response = staff_client.get("/api/v1/state/global:absent")
    tracking.flush()
    assert set(entries("trace:")) == {f"trace:{response[CID]}", f"trace:{response[CID]}:completion"}
    assert set(entries("sess:")) == {"sess:staffer"}
    assert not entries("request:") and not entries("session:")


def test_many_requests_are_written_in_one_batch(tracking, staff_client):
    for _ in range(20):
        staff_client.get("/api/v1/state/global:absent")

    assert tracking.flush() == 60  # 20 requests, 20 completions, 20 session updates...
    stats = tracking.stats()
    # ...the session updates merged into one write: one bulk call of 41 operations.
    assert stats["batches"] == 1
    assert stats["written"] == stats["operations"] == 41
    assert tracking.buffer_state() == {"buffered": 0, "last_batch_size": 41, "max_batch_size": 41}
    assert (stats["dropped"], stats["failed"]) == (0, 0)
    assert tracking_services.stats() == stats  # what the metrics export reads
    assert tracking_services.buffer_state() == tracking.buffer_state()
    assert len(entries("request:")) == 40
    assert StateEvent.objects.filter(key="session:staffer").count() == 1


def test_batches_are_capped_at_the_batch_size(tracking, staff_client, settings):
    settings.STATE_TRACKING_BATCH_SIZE = 7
    for _ in range(10):
        staff_client.get("/api/v1/state/global:absent")
    tracking.flush()
    assert tracking.buffer_state()["max_batch_size"] <= 7
    assert tracking.stats()["batches"] >= 3


def test_a_full_buffer_drops_and_counts_records_and_the_request_is_served(
    tracking, staff_client, settings
):
    settings.STATE_TRACKING_BUFFER_SIZE = 5
    statuses = [staff_client.get("/api/v1/state/global:absent").status_code for _ in range(4)]
    assert statuses == [404] * 4
    stats = tracking.stats()
    assert tracking.buffer_state()["buffered"] == 5
    assert stats["dropped"] == 4 * 3 - 5  # request, completion and session per request
    tracking.flush()
    assert tracking.stats()["written"] == 5


def test_tracking_switched_off_records_nothing_but_still_echoes(tracking, staff_client, settings):
    settings.STATE_TRACK_REQUESTS = False
    response = staff_client.get("/api/v1/state/global:absent", HTTP_X_REQUEST_ID="off-1")
    assert response[CID] == "off-1"
    assert tracking.stats()["recorded"] == 0


@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/static/admin/css/base.css", "/api/v1/state/events"]
)
def test_untracked_paths_get_an_id_but_no_records(tracking, staff_client, path):
    response = staff_client.get(path)
    assert response.has_header(CID)
    assert tracking.stats()["recorded"] == 0


def test_untracked_paths_come_from_settings(tracking, staff_client, settings):
    settings.STATE_TRACKING_UNTRACKED_PATHS = ["/api/v1/state/global:quiet"]
    staff_client.get("/api/v1/state/global:quiet")
    assert tracking.stats()["recorded"] == 0
    staff_client.get("/healthz")
    assert tracking.stats()["recorded"] == 2  # no user on /healthz: no session update


# --- session records ------------------------------------------------------------------------


def test_session_record_for_a_token_user(tracking, user_client):
    response = user_client.get("/api/v1/state/user:alice:prefs")
    assert response.status_code == 404
    tracking.flush()
    session = selectors.entry_get(key="session:alice")
    record = selectors.entry_get(key=f"request:{response[CID]}")
    assert session.value == {
        "last_request": record.value["started_at"],
        "correlation_id": response[CID],
        "active": True,
        "last_heartbeat": None,
    }
    assert ttl_of(session) == 3600
    # The user may read it through the API: it is their own key.
    assert user_client.get("/api/v1/state/session:alice").json()["data"]["value"]["active"]


def test_session_record_for_a_browser_session_user(tracking, user):
    browser = APIClient()
    browser.force_login(user)
    response = browser.get("/api/v1/state/global:absent")
    tracking.flush()
    assert selectors.entry_get(key="session:alice").value["correlation_id"] == response[CID]


def test_later_requests_update_the_session(tracking, user_client, settings):
    first = user_client.get("/api/v1/state/global:absent")
    tracking.flush()
    second = user_client.get("/api/v1/state/global:absent")
    tracking.flush()
    session = selectors.entry_get(key="session:alice")
    assert session.version == 2
    assert session.value["correlation_id"] == second[CID] != first[CID]


def test_no_session_record_for_anonymous_requests(tracking, anon_client):
    assert anon_client.get("/api/v1/state/global:x").status_code == 401
    bad_token = anon_client.get("/api/v1/state/global:x", HTTP_AUTHORIZATION="Bearer nope")
    assert bad_token.status_code == 401
    tracking.flush()
    assert entries("session:") == {}
    assert len(entries("request:")) == 4  # the requests themselves are tracked


def test_a_username_that_is_not_a_key_gets_no_session_record(tracking, db):
    odd = User.objects.create_user("carol+work")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {Token.objects.create(user=odd).key}")
    response = client.get("/api/v1/state/global:absent")
    tracking.flush()
    assert entries("session:") == {}
    assert selectors.entry_get(key=f"request:{response[CID]}") is not None
    assert tracking.stats()["skipped"] == 1


def test_user_sees_own_session_changes_but_not_request_records(tracking, user, user_client):
    from state import access

    user_client.get("/api/v1/state/global:absent")
    tracking.flush()
    keys = set(entries("session:")) | set(entries("request:"))
    assert {key for key in keys if access.can_read(user, key)} == {"session:alice"}
    assert access.can_read_prefix(user, "session:alice")
    assert not access.can_read_prefix(user, "request:")


# --- redaction ------------------------------------------------------------------------------


def test_no_token_or_cookie_value_is_stored_anywhere(
    tracking, user, snapshot_dir, caplog, settings
):
    token = Token.objects.create(user=user).key
    client = APIClient()
    client.force_login(user)  # a real session cookie
    client.cookies["csrftoken"] = "csrf-cookie-value-123456"
    session_cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    secrets = {
        "token": token,
        "session cookie": session_cookie,
        "csrf cookie": "csrf-cookie-value-123456",
        "api key": "api-key-value-abcdef",
        "custom token header": "custom-header-token-999",
        "password header": "hunter2-password-777",
        "query token": "query-token-value-555",
        "proxy credential": "proxy-cred-value-333",
        "echoed in referer": "referer-token-444444",
    }
    caplog.set_level(logging.DEBUG)
    response = client.get(
        f"/api/v1/state/global:absent?token={secrets['query token']}&page=2",
        HTTP_AUTHORIZATION=f"Bearer {token}",
        HTTP_X_API_KEY=secrets["api key"],
        HTTP_X_AUTH_TOKEN=secrets["custom token header"],
        HTTP_X_USER_PASSWORD=secrets["password header"],
        HTTP_PROXY_AUTHORIZATION=f"Basic {secrets['proxy credential']}",
        HTTP_REFERER=f"https://app.example/page?access_token={secrets['echoed in referer']}",
        HTTP_X_FORWARDED_NOTE=f"copied {token} by a proxy",
        HTTP_USER_AGENT="kept/1.0",
    )
    assert response.status_code == 404
    tracking.flush()
    snapshot = services.snapshot_create(label="redaction", actor="test")

    record = selectors.entry_get(key=f"request:{response[CID]}").value
    headers = record["headers"]
    for name in ("Authorization", "Cookie", "X-Api-Key", "X-Auth-Token", "X-User-Password",
                 "Proxy-Authorization"):  # fmt: skip
        assert headers[name] == redaction.REDACTED, name
    assert headers["User-Agent"] == "kept/1.0"
    assert headers["X-Forwarded-Note"] == f"copied {redaction.REDACTED} by a proxy"
    assert record["uri"] == "/api/v1/state/global:absent?token=[redacted]&page=2"
    assert headers["Referer"] == "https://app.example/page?access_token=[redacted]"

    stored = json.dumps([[e.key, e.value, e.metadata] for e in StateEntry.objects.all()])
    logged = json.dumps([[e.key, e.old_value, e.new_value] for e in StateEvent.objects.all()])
    with selectors.snapshot_open(snapshot=snapshot) as file:
        snapshotted = gzip.decompress(file.read()).decode()
    assert f"request:{response[CID]}" in stored and f"request:{response[CID]}" in snapshotted
    for what, secret in secrets.items():
        for place, text in [("entries", stored), ("event log", logged),
                            ("snapshot", snapshotted), ("log lines", caplog.text)]:  # fmt: skip
            assert secret not in text, f"{what} found in {place}"


def test_redaction_of_set_cookie_and_short_values():
    uri, headers = redaction.redact_request(
        path="/p", query="password=pw&q=1",
        headers={"Set-Cookie": "a=bbbbbbbb; Path=/", "X-Secret": "s", "Accept": "*/*"},
    )  # fmt: skip
    assert uri == "/p?password=[redacted]&q=1"
    assert headers == {"Set-Cookie": "[redacted]", "X-Secret": "[redacted]", "Accept": "*/*"}


def test_oversized_headers_are_truncated_not_refused(tracking, staff_client):
    response = staff_client.get("/api/v1/state/global:absent", HTTP_X_LONG="v" * 100_000)
    tracking.flush()
    headers = selectors.entry_get(key=f"request:{response[CID]}").value["headers"]
    assert len(headers["X-Long"]) == redaction.MAX_VALUE_LENGTH
    assert tracking.stats()["failed"] == 0


def test_heartbeat_refreshes_are_coalesced(tracking, user, settings):
    settings.STATE_SESSION_HEARTBEAT_WRITE_SECS = 30
    for _ in range(5):
        tracking_services.session_heartbeat(username="alice")
    assert tracking.stats()["recorded"] == 1
    assert tracking.stats()["coalesced"] == 4
    tracking.flush()
    first = selectors.entry_get(key="session:alice")
    assert first.value["last_heartbeat"] is not None and first.value["active"]

    # Another process (a fresh tracker) heartbeats within the period: nothing is written.
    other = tracking_services.Tracker(background=False)
    other.update_session(username="alice", fields={"last_heartbeat": "2099-01-01T00:00:00Z"},
                         heartbeat=True)  # fmt: skip
    other.flush()
    assert selectors.entry_get(key="session:alice").version == first.version
    assert other.stats()["coalesced"] == 1

    # A change besides the heartbeat is never coalesced.
    other.update_session(username="alice", fields={"active": True, "correlation_id": "c-2"},
                         heartbeat=False)  # fmt: skip
    other.flush()
    assert selectors.entry_get(key="session:alice").value["correlation_id"] == "c-2"

    # Once the period has passed, a heartbeat is written again.
    settings.STATE_SESSION_HEARTBEAT_WRITE_SECS = 0
    tracking_services.session_heartbeat(username="alice")
    tracking.flush()
    assert selectors.entry_get(key="session:alice").version == first.version + 2


def test_updates_from_two_processes_merge_instead_of_overwriting(tracking, user_client):
    response = user_client.get("/api/v1/state/global:absent")
    other = tracking_services.Tracker(background=False)
    other.connection_opened("alice")
    other.flush()  # the other process writes first: last_heartbeat
    tracking.flush()  # then ours: last_request and correlation_id, merged in
    value = selectors.entry_get(key="session:alice").value
    assert value["correlation_id"] == response[CID]
    assert value["last_heartbeat"] is not None and value["last_request"] is not None


def test_idle_sessions_turn_inactive(tracking, time_machine, settings):
    from state import worker

    settings.STATE_SESSION_IDLE_SECS = 60
    time_machine.move_to("2030-01-01T00:00:00Z", tick=False)
    tracking.update_session(username="idle", fields={"last_heartbeat": tracking_services.now_iso()},
                            heartbeat=False)  # fmt: skip
    time_machine.move_to("2030-01-01T00:00:50Z", tick=False)
    tracking.update_session(username="busy", fields={"last_request": tracking_services.now_iso()},
                            heartbeat=False)  # fmt: skip
    tracking.flush()
    idle_before = selectors.entry_get(key="session:idle")

    time_machine.move_to("2030-01-01T00:01:30Z", tick=False)
    runs = worker.Worker(jobs=[j for j in worker.JOBS if j.name == "sessions"]).run_due()

    assert [run.result for run in runs] == ["deactivated 1 idle sessions"]
    idle = selectors.entry_get(key="session:idle")
    assert idle.value == {**idle_before.value, "active": False}
    assert idle.version == idle_before.version + 1
    assert idle.expires_at == idle_before.expires_at  # deactivating does not extend its life
    assert selectors.entry_get(key="session:busy").value["active"] is True
    # Already inactive sessions are left alone.
    assert tracking_services.sessions_deactivate_idle() == 0


def test_settings_checks_catch_a_bad_prefix_and_a_heartbeat_above_the_idle_window(settings):
    from sessions_tracking.checks import tracking_settings

    assert tracking_settings(None) == []
    settings.STATE_REQUEST_PREFIX = "-bad "
    settings.STATE_SESSION_HEARTBEAT_WRITE_SECS = settings.STATE_SESSION_IDLE_SECS
    assert [m.id for m in tracking_settings(None)] == [
        "sessions_tracking.E001", "sessions_tracking.W001",
    ]  # fmt: skip
    settings.STATE_REQUEST_PREFIX = ""
    settings.STATE_SESSION_HEARTBEAT_WRITE_SECS = 1
    assert [m.id for m in tracking_settings(None)] == ["sessions_tracking.E001"]


def test_a_session_write_that_loses_a_race_is_merged_again_and_retried(tracking, db):
    class RacedTracker(tracking_services.Tracker):
        """Another process writes the session between this batch's read and its write."""

        raced = False

        def _operations(self, batch):
            operations = super()._operations(batch)
            if not self.raced:
                self.raced = True
                services.state_set(key="session:alice", value={"last_heartbeat": "elsewhere"})
            return operations

    raced = RacedTracker(background=False)
    raced.update_session(username="alice", fields={"correlation_id": "mine"}, heartbeat=False)
    raced.flush()
    assert raced.stats()["conflicts"] == 1
    assert selectors.entry_get(key="session:alice").value == {"last_heartbeat": "elsewhere"}
    raced.flush()  # the next batch reads the new value and merges into it
    value = selectors.entry_get(key="session:alice").value
    assert (value["correlation_id"], value["last_heartbeat"]) == ("mine", "elsewhere")
    assert raced.stats()["failed"] == 0
