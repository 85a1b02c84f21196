"""The event stream consumer, through channels' WebsocketCommunicator and the real ASGI app."""

import asyncio
import functools
import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import Client
from rest_framework.authtoken.models import Token

from config.asgi import application
from state import events, services, stream
from state.models import AccessRule, StateEvent

PATH = "/api/v1/state/events"
# serialized_rollback: a flush between tests would drop the store revision row migrations made.
pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def async_test(test):
    """Run an async test body on a fresh event loop (channels' own test style, no plugin)."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return async_to_sync(test)(*args, **kwargs)

    return run


def token_for(user) -> str:
    return Token.objects.get_or_create(user=user)[0].key


async def connect(
    user=None, *, query: str = "", headers=None, app=application
) -> WebsocketCommunicator:
    headers = list(headers or [])
    if user is not None:
        token = await database_sync_to_async(token_for)(user)
        headers.append((b"authorization", f"Bearer {token}".encode()))
    communicator = WebsocketCommunicator(app, PATH + query, headers=headers)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def receive(communicator: WebsocketCommunicator, timeout: float = 3) -> dict[str, Any]:
    return await communicator.receive_json_from(timeout=timeout)


async def subscribed(user, **kwargs) -> tuple[WebsocketCommunicator, dict[str, Any]]:
    communicator = await connect(user, **kwargs)
    first = await receive(communicator)
    assert first["type"] == "subscribed", first
    await settle(communicator)
    return communicator, first["data"]


async def settle(communicator: WebsocketCommunicator) -> None:
    """Round-trip a ping: everything the server queued before it has been sent."""
    await communicator.send_json_to({"type": "ping"})
    assert await receive(communicator) == {"type": "pong"}


async def changes(communicator: WebsocketCommunicator, count: int) -> list[dict[str, Any]]:
    received = [await receive(communicator) for _ in range(count)]
    assert all(m["type"] == "state_change" for m in received), received
    return [m["data"] for m in received]


async def assert_silent(communicator: WebsocketCommunicator) -> None:
    """Nothing but the pong of a ping arrives: no event slipped through."""
    await communicator.send_json_to({"type": "ping"})
    assert await receive(communicator) == {"type": "pong"}
    assert await communicator.receive_nothing(timeout=0.3)


write = database_sync_to_async(services.state_set)
bulk = database_sync_to_async(services.state_bulk)


async def closed_with(communicator: WebsocketCommunicator) -> int:
    output = await communicator.receive_output(timeout=3)
    assert output["type"] == "websocket.close", output
    return output["code"]


# --- authentication -------------------------------------------------------------------------


@async_test
async def test_bearer_header_subscribes_to_own_keys_and_public_prefixes(user):
    await write(key="global:a", value=1)
    communicator, data = await subscribed(user)
    assert data == {
        "prefixes": ["user:alice", "session:alice", "global:", "market:"],
        "revision": 1,
    }
    await communicator.disconnect()


@async_test
async def test_token_keyword_header_and_query_token_authenticate(user):
    token = await database_sync_to_async(token_for)(user)
    for kwargs in (
        {"headers": [(b"authorization", f"Token {token}".encode())]},
        {"query": f"?token={token}"},
    ):
        communicator = await connect(**kwargs)
        assert (await receive(communicator))["type"] == "subscribed"
        await communicator.disconnect()


@async_test
async def test_django_session_authenticates(user):
    def login_cookie() -> str:
        client = Client()
        client.force_login(user)
        return client.cookies["sessionid"].value

    cookie = await database_sync_to_async(login_cookie)()
    communicator = await connect(
        headers=[(b"cookie", f"sessionid={cookie}".encode()), (b"origin", b"http://127.0.0.1")]
    )
    assert (await receive(communicator))["type"] == "subscribed"
    await communicator.disconnect()


@async_test
async def test_anonymous_and_bad_tokens_are_closed_4401_before_any_event(db):
    for kwargs in (
        {},
        {"query": "?token=nope"},
        {"headers": [(b"authorization", b"Bearer nope")]},
    ):
        communicator = await connect(**kwargs)
        assert await closed_with(communicator) == 4401
        await communicator.disconnect()


@async_test
async def test_foreign_browser_origin_is_refused(user):
    token = await database_sync_to_async(token_for)(user)
    communicator = WebsocketCommunicator(
        application, f"{PATH}?token={token}", headers=[(b"origin", b"https://evil.example")]
    )
    connected, _ = await communicator.connect()
    assert not connected


# --- delivery and access ----------------------------------------------------------------


@async_test
async def test_change_message_carries_the_logged_change(user):
    communicator, start = await subscribed(user)
    await write(key="user:alice", value={"n": 1}, source="web")
    await write(key="user:alice", value={"n": 2})
    first, second = await changes(communicator, 2)
    row = await database_sync_to_async(StateEvent.objects.get)(revision=first["revision"])
    assert first == {
        "op": "set",
        "key": "user:alice",
        "old_value": None,
        "new_value": {"n": 1},
        "version": 1,
        "revision": start["revision"] + 1,
        "timestamp": row.timestamp.timestamp(),
        "source": "web",
    }
    assert (second["old_value"], second["version"]) == ({"n": 1}, 2)
    await database_sync_to_async(services.state_delete)(key="user:alice")
    (deleted,) = await changes(communicator, 1)
    assert (deleted["op"], deleted["new_value"], deleted["old_value"]) == ("delete", None, {"n": 2})
    await communicator.disconnect()


@async_test
async def test_no_message_about_keys_the_subscriber_may_not_read(user, staff_user):
    communicator, _ = await subscribed(user)
    for key in ("user:bob", "user:alicex", "team:x", "feature_flag:f", "session:alice2"):
        await write(key=key, value=1)
    await write(key="session:alice:tab", value=1)
    (change,) = await changes(communicator, 1)
    assert change["key"] == "session:alice:tab"
    await assert_silent(communicator)
    await communicator.disconnect()


@async_test
async def test_forbidden_prefix_gets_an_error_and_never_an_event(user):
    communicator, _ = await subscribed(user)
    await communicator.send_json_to({"type": "subscribe", "prefixes": ["team:", "feature_flag:"]})
    error = await receive(communicator)
    assert error["type"] == "error"
    assert (error["data"]["code"], error["data"]["prefixes"]) == ("permission_denied", ["team:"])
    ack = await receive(communicator)
    assert ack["type"] == "subscribed" and "team:" not in ack["data"]["prefixes"]
    await write(key="team:secret", value=1)
    await write(key="feature_flag:f", value=1)
    (change,) = await changes(communicator, 1)
    assert change["key"] == "feature_flag:f"
    await assert_silent(communicator)
    await communicator.disconnect()


@async_test
async def test_subscribe_to_granted_prefix_then_unsubscribe(writer_user):
    communicator, _ = await subscribed(writer_user)
    await communicator.send_json_to({"type": "subscribe", "prefixes": ["team:", "reports:q"]})
    ack = await receive(communicator)
    assert ack["data"]["prefixes"][-2:] == ["team:", "reports:q"]
    await write(key="team:a", value=1)
    await write(key="reports:q1", value=1)
    assert [c["key"] for c in await changes(communicator, 2)] == ["team:a", "reports:q1"]
    await communicator.send_json_to({"type": "unsubscribe", "prefixes": ["team:", "global:"]})
    ack = await receive(communicator)
    assert "team:" not in ack["data"]["prefixes"] and "global:" not in ack["data"]["prefixes"]
    await write(key="team:a", value=2)
    await write(key="global:g", value=2)
    await write(key="market:m", value=2)
    assert [c["key"] for c in await changes(communicator, 1)] == ["market:m"]
    await assert_silent(communicator)
    await communicator.disconnect()


@async_test
async def test_staff_may_subscribe_to_everything(staff_user):
    communicator, _ = await subscribed(staff_user)
    await communicator.send_json_to({"type": "subscribe", "prefixes": [""]})
    assert (await receive(communicator))["type"] == "subscribed"
    await write(key="team:x", value=1)
    await write(key="user:bob", value=1)
    assert [c["key"] for c in await changes(communicator, 2)] == ["team:x", "user:bob"]
    await communicator.disconnect()


@async_test
async def test_revisions_strictly_increase_without_gaps_or_duplicates(staff_user):
    communicator, start = await subscribed(staff_user, query="?prefixes=k:")
    await bulk(operations=[{"op": "set", "key": f"k:{i}", "value": i} for i in range(30)])
    for i in range(20):
        await write(key=f"k:{i % 3}", value=i)
    revisions = [c["revision"] for c in await changes(communicator, 50)]
    assert revisions == list(range(start["revision"] + 1, start["revision"] + 51))
    await assert_silent(communicator)
    await communicator.disconnect()


@async_test
async def test_ping_gets_pong(user):
    communicator, _ = await subscribed(user)
    await communicator.send_json_to({"type": "ping"})
    assert await receive(communicator) == {"type": "pong"}
    await communicator.disconnect()


DEEP = "[" * 2000 + "]" * 2000


@async_test
async def test_malformed_messages_get_validation_errors_and_the_connection_stays_usable(user):
    communicator, _ = await subscribed(user)
    subscribe = '{"type": "subscribe", "prefixes": ["global:"], "since_revision": %s}'
    for message in (
        '{"type": "dance"}', "not json", '{"type": "subscribe", "prefixes": "a:"}', '{"type": []}',
        '{"type": "ping", "type": "ping"}',  # duplicate field
        '{"type": "subscribe", "prefixes": ["global:"], "since_revison": 0}',  # unknown field
        DEEP, '{"type": "subscribe", "prefixes": ' + DEEP + "}",
        *(subscribe % bad for bad in ('-1', '"\\u00b2"', '"1"', '1.0', 'true', '1e400',
                                      "9" * 5000, str(2**63))),
    ):  # fmt: skip
        await communicator.send_to(text_data=message)
        error = await receive(communicator)
        assert (error["type"], error["data"]["code"]) == ("error", "validation_error"), message
    await settle(communicator)
    await write(key="global:still", value=1)
    assert [c["key"] for c in await changes(communicator, 1)] == ["global:still"]
    await communicator.disconnect()


@async_test
async def test_bad_url_parameters_are_an_error_after_subscribed_and_the_connection_stays(user):
    await write(key="global:a", value=1)
    for query, prefixes in (
        ("?since_revision=%C2%B2", None),  # "²": isdigit() but not a number int() reads
        ("?since_revision=%D9%A3", None),  # "٣": isdecimal() but not ASCII
        ("?since_revision=", None),
        ("?since_revision=99", None),  # ahead of the store
        ("?since_revision=" + "9" * 30, None),
        ("?prefixes=global:&since_revision=-1", ["global:"]),
        ("?prefixes=global:,,market:", None),
    ):
        communicator = await connect(user, query=query)
        first = await receive(communicator)
        assert first["type"] == "subscribed", (query, first)
        assert first["data"]["revision"] == 1
        if prefixes is not None:
            assert first["data"]["prefixes"] == prefixes
        error = await receive(communicator)
        assert (error["type"], error["data"]["code"]) == ("error", "validation_error"), query
        await settle(communicator)
        await communicator.disconnect()


@async_test
async def test_a_connection_subscribes_to_at_most_max_prefixes(staff_user):
    communicator, data = await subscribed(staff_user)
    room = stream.MAX_PREFIXES - len(data["prefixes"])
    await communicator.send_json_to({"type": "subscribe",
                                     "prefixes": [f"p{i}:" for i in range(room)]})  # fmt: skip
    assert len((await receive(communicator))["data"]["prefixes"]) == stream.MAX_PREFIXES
    await communicator.send_json_to({"type": "subscribe", "prefixes": ["one-more:"]})
    error = await receive(communicator)
    assert (error["type"], error["data"]["code"]) == ("error", "validation_error")
    await settle(communicator)
    await communicator.disconnect()


@async_test
async def test_idle_connection_gets_progress_past_changes_it_cannot_see(user, settings):
    settings.STATE_PROGRESS_INTERVAL_SECS = 0.2
    communicator, start = await subscribed(user)
    await write(key="team:hidden", value=1)
    await write(key="team:hidden", value=2)
    progress = await receive(communicator)
    while progress["data"]["revision"] < start["revision"] + 2:
        progress = await receive(communicator)
    assert progress == {"type": "progress", "data": {"revision": start["revision"] + 2}}
    await communicator.disconnect()


# --- resume -------------------------------------------------------------------------------


@async_test
async def test_resume_with_since_revision_replays_exactly_what_was_missed(user):
    communicator, _ = await subscribed(user)
    await write(key="global:a", value=1)
    (seen,) = await changes(communicator, 1)
    await communicator.disconnect()

    await write(key="global:a", value=2)
    await write(key="team:hidden", value=1)
    await write(key="market:m", value=3)
    communicator, _ = await subscribed(user)
    await communicator.send_json_to({"type": "subscribe", "prefixes": ["feature_flag:"],
                                     "since_revision": seen["revision"]})  # fmt: skip
    ack = await receive(communicator)
    assert ack["data"]["revision"] == seen["revision"]
    await write(key="feature_flag:live", value=4)
    replayed = await changes(communicator, 3)
    assert [(c["key"], c["revision"]) for c in replayed] == [
        ("global:a", seen["revision"] + 1),
        ("market:m", seen["revision"] + 3),
        ("feature_flag:live", seen["revision"] + 4),
    ]
    await assert_silent(communicator)
    await communicator.disconnect()


@async_test
async def test_resume_on_the_url_replays_then_goes_live(user, settings):
    settings.STATE_STREAM_BATCH_SIZE = 2
    for i in range(5):
        await write(key="global:a", value=i)
    communicator = await connect(user, query="?since_revision=1&prefixes=global:")
    assert await receive(communicator) == {
        "type": "subscribed",
        "data": {"prefixes": ["global:"], "revision": 1},
    }
    await write(key="global:a", value=5)
    assert [c["revision"] for c in await changes(communicator, 5)] == [2, 3, 4, 5, 6]
    await communicator.disconnect()


@async_test
async def test_resume_older_than_the_log_is_revision_compacted(user):
    for i in range(3):
        await write(key="global:a", value=i)
    await database_sync_to_async(StateEvent.objects.filter(revision__lte=2).delete)()
    communicator, _ = await subscribed(user)
    await communicator.send_json_to({"type": "subscribe", "prefixes": ["global:"],
                                     "since_revision": 0})  # fmt: skip
    error = await receive(communicator)
    assert error["type"] == "error"
    assert (error["data"]["code"], error["data"]["oldest_revision"]) == ("revision_compacted", 3)
    await communicator.send_json_to({"type": "subscribe", "prefixes": ["global:"],
                                     "since_revision": 2})  # fmt: skip
    assert (await receive(communicator))["type"] == "subscribed"
    assert [c["revision"] for c in await changes(communicator, 1)] == [3]
    await communicator.disconnect()


@async_test
async def test_since_revision_ahead_of_the_store_is_refused(user):
    communicator, _ = await subscribed(user)
    await communicator.send_json_to({"type": "subscribe", "prefixes": ["global:"],
                                     "since_revision": 99})  # fmt: skip
    error = await receive(communicator)
    assert error["data"]["code"] == "validation_error"
    await communicator.disconnect()


# --- slow subscribers and the doorbell ---------------------------------------------------


@async_test
async def test_subscriber_that_falls_behind_gets_lagged_then_4008(user, settings):
    settings.STATE_STREAM_QUEUE_SIZE = 2
    communicator, start = await subscribed(user)
    results = await bulk(operations=[{"op": "set", "key": f"global:{i}", "value": i}
                                     for i in range(6)])  # fmt: skip
    assert len(results) == 6  # the writer was not held back
    error = await receive(communicator)
    assert error["type"] == "error"
    assert (error["data"]["code"], error["data"]["last_revision"]) == ("lagged", start["revision"])
    assert await closed_with(communicator) == 4008
    await communicator.disconnect()


@async_test
async def test_lost_doorbell_is_repaired_by_the_log_poll(user, settings):
    settings.STATE_BROADCAST_CHANGES = False
    settings.STATE_STREAM_POLL_INTERVAL_SECS = 0.2
    communicator, _ = await subscribed(user)
    await write(key="global:quiet", value=1)
    (change,) = await changes(communicator, 1)
    assert change["key"] == "global:quiet"
    await communicator.disconnect()


@async_test
async def test_late_doorbell_delivers_everything_in_order_from_the_log(user, settings):
    settings.STATE_BROADCAST_CHANGES = False
    settings.STATE_STREAM_POLL_INTERVAL_SECS = 60
    communicator, start = await subscribed(user)
    for i in range(3):
        await write(key="global:a", value=i)
    assert await communicator.receive_nothing(timeout=0.3)
    # Only the doorbell of the middle change arrives, after the last one was written.
    await get_channel_layer().group_send(
        events.CHANGES_GROUP, {"type": events.DOORBELL_TYPE, "revision": start["revision"] + 2}
    )
    revisions = [c["revision"] for c in await changes(communicator, 3)]
    assert revisions == [start["revision"] + 1, start["revision"] + 2, start["revision"] + 3]
    await communicator.disconnect()


def _record_restore(snapshot_id: int) -> int:
    """Write a restore log row as the snapshot service does (one row, op "restore")."""
    with services._write(actor="test") as tx:
        revision = tx.next_revision()
        StateEvent.objects.create(
            revision=revision, key="", op="restore", old_value=None,
            new_value={"snapshot_id": snapshot_id, "key_count": 0}, version=0, timestamp=tx.now,
        )  # fmt: skip
        events.publish(revision)
    return revision


@async_test
async def test_restore_is_one_state_reset_message(user):
    communicator, _ = await subscribed(user)
    revision = await database_sync_to_async(_record_restore)(7)
    message = await receive(communicator)
    assert message == {"type": "state_reset", "data": {"snapshot_id": 7, "revision": revision}}
    await communicator.disconnect()


@async_test
async def test_revoked_rule_stops_events_on_an_open_connection(writer_user, settings):
    settings.STATE_STREAM_ACCESS_RECHECK_SECS = 0.2
    communicator, _ = await subscribed(writer_user)
    await communicator.send_json_to({"type": "subscribe", "prefixes": ["reports:"]})
    assert (await receive(communicator))["type"] == "subscribed"
    await database_sync_to_async(AccessRule.objects.filter(prefix="reports:").delete)()
    error = await receive(communicator)
    assert (error["data"]["code"], error["data"]["prefixes"]) == ("permission_denied", ["reports:"])
    await write(key="reports:q", value=1)
    await write(key="global:g", value=1)
    assert [c["key"] for c in await changes(communicator, 1)] == ["global:g"]
    await communicator.disconnect()


@async_test
async def test_deactivated_user_is_cut_off(user, settings):
    settings.STATE_STREAM_ACCESS_RECHECK_SECS = 0.2
    communicator, _ = await subscribed(user)
    await database_sync_to_async(type(user).objects.filter(pk=user.pk).update)(is_active=False)
    error = await receive(communicator)
    assert error["data"]["code"] == "unauthenticated"
    assert await closed_with(communicator) == 4401
    await communicator.disconnect()


# --- a message the server cannot send ---------------------------------------------------
# daphne (autobahn) raises when asked to send a message over its --websocket-max-message-size;
# tests/e2e/test_stream_limits.py does it for real. These drive each of the stream's three send
# paths into that failure: the hub's hand-off to an idle connection, the connection's own
# queue, and a replay from the log.


def refusing_larger_than(limit: int, *, hold_pong: asyncio.Event | None = None):
    """The real application behind a server that cannot send messages over `limit` bytes."""

    async def app(scope, receive, send):
        async def checked(message):
            text = message.get("text") or ""
            if hold_pong is not None and text == '{"type":"pong"}':
                await hold_pong.wait()
            if message["type"] == "websocket.send" and len(text.encode()) > limit:
                raise ValueError(f"tried to send a message exceeding the limit of {limit} octets")
            await send(message)

        await application(scope, receive, checked)

    return app


SEND_FAILED = "A message could not be sent on this connection; resume from last_revision."


async def until_closed(communicator: WebsocketCommunicator) -> tuple[list[dict[str, Any]], int]:
    """Return every message up to the close, and the close code."""
    received = []
    while (output := await communicator.receive_output(timeout=3))["type"] != "websocket.close":
        received.append(json.loads(output["text"]))
        assert len(received) < 100, received[-3:]  # not closed: progress keeps coming
    return received, output["code"]


def without_progress(messages: list[dict[str, Any]], undelivered: int) -> list[dict[str, Any]]:
    """Drop progress messages, checking that none claims the undelivered revision."""
    progress = [m["data"]["revision"] for m in messages if m["type"] == "progress"]
    assert all(revision < undelivered for revision in progress), (progress, undelivered)
    return [m for m in messages if m["type"] != "progress"]


@async_test
async def test_change_too_large_to_send_closes_4008_with_the_last_delivered_revision(
    user, settings
):
    settings.STATE_PROGRESS_INTERVAL_SECS = 0.1
    communicator, _ = await subscribed(user, app=refusing_larger_than(1000))
    delivered = (await write(key="global:a", value="small"))[0].revision
    big = (await write(key="global:a", value="x" * 2000))[0].revision
    await write(key="global:a", value="after")
    received, code = await until_closed(communicator)
    assert [(m["type"], m["data"].get("revision")) for m in without_progress(received, big)] == [
        ("state_change", delivered),
        ("error", None),
    ]
    assert received[-1]["data"] == {
        "code": "send_failed", "message": SEND_FAILED, "last_revision": big - 1,
    }  # fmt: skip
    assert code == stream.LAGGED_CLOSE_CODE
    await communicator.disconnect()


@async_test
async def test_queued_change_too_large_to_send_closes_4008_with_the_last_delivered(user):
    hold = asyncio.Event()
    hold.set()
    communicator, _ = await subscribed(user, app=refusing_larger_than(1000, hold_pong=hold))
    hold.clear()
    await communicator.send_json_to({"type": "ping"})  # its sender now waits on the pong
    delivered = (await write(key="global:a", value="small"))[0].revision
    big = (await write(key="global:a", value="x" * 2000))[0].revision
    last = (await write(key="global:a", value="after"))[0].revision
    async with asyncio.timeout(3):
        while stream.get_hub().revision < last:  # the hub queued all three behind the pong
            await asyncio.sleep(0.01)
    hold.set()
    received, code = await until_closed(communicator)
    assert [(m["type"], m.get("data", {}).get("revision")) for m in received] == [
        ("pong", None),
        ("state_change", delivered),
        ("error", None),
    ]
    assert received[-1]["data"]["last_revision"] == big - 1
    assert code == stream.LAGGED_CLOSE_CODE
    await communicator.disconnect()


@async_test
async def test_replayed_change_too_large_to_send_closes_4008_with_the_last_delivered(user):
    start = (await write(key="global:a", value="before"))[0].revision
    delivered = (await write(key="global:a", value="small"))[0].revision
    big = (await write(key="global:a", value="x" * 2000))[0].revision
    await write(key="global:a", value="after")
    communicator = await connect(
        user, query=f"?prefixes=global:&since_revision={start}", app=refusing_larger_than(1000)
    )
    received, code = await until_closed(communicator)
    assert [(m["type"], m["data"].get("revision")) for m in received] == [
        ("subscribed", start),
        ("state_change", delivered),
        ("error", None),
    ]
    assert received[-1]["data"]["last_revision"] == big - 1
    assert code == stream.LAGGED_CLOSE_CODE
    await communicator.disconnect()
