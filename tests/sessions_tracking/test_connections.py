"""WebSocket connections in process: the real ASGI app through channels' communicator."""

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from rest_framework.authtoken.models import Token

from config.asgi import application
from state import selectors

PATH = "/api/v1/state/events"
pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


async def opened(user=None, *, headers=()) -> WebsocketCommunicator:
    headers = list(headers)
    if user is not None:
        token = await database_sync_to_async(lambda: Token.objects.get_or_create(user=user)[0])()
        headers.append((b"authorization", f"Bearer {token.key}".encode()))
    communicator = WebsocketCommunicator(application, PATH, headers=headers)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def ping(communicator: WebsocketCommunicator) -> None:
    await communicator.send_json_to({"type": "ping"})
    while (message := await communicator.receive_json_from(timeout=3))["type"] != "pong":
        assert message["data"]["key"] == "session:alice"  # her own session, on her stream


def test_an_open_connection_and_its_pings_feed_the_session(tracking, user, settings):
    settings.STATE_SESSION_HEARTBEAT_WRITE_SECS = 0  # no coalescing: every ping counts

    async def body():
        communicator = await opened(user)
        assert (await communicator.receive_json_from(timeout=3))["type"] == "subscribed"
        assert tracking.stats()["recorded"] == 1  # the connection marks the session active
        assert dict(tracking._connections) == {"session:alice": 1}
        await database_sync_to_async(tracking.flush)()
        first = await database_sync_to_async(selectors.entry_get)(key="session:alice")
        for expected in (2, 3):
            await ping(communicator)
            assert tracking.stats()["recorded"] == expected
        await database_sync_to_async(tracking.flush)()
        later = await database_sync_to_async(selectors.entry_get)(key="session:alice")
        await communicator.disconnect()
        return first, later

    first, later = async_to_sync(body)()
    assert first.value["active"] is True and first.value["last_heartbeat"] is not None
    assert later.value["last_heartbeat"] > first.value["last_heartbeat"]
    assert later.version == first.version + 1  # two pings in one batch: one write
    assert tracking._connections == {}


def test_pings_record_nothing_when_propagation_is_off(tracking, user, settings):
    settings.STATE_PROPAGATE_STATE = False

    async def body():
        communicator = await opened(user)
        await communicator.receive_json_from(timeout=3)
        await ping(communicator)
        await communicator.disconnect()

    async_to_sync(body)()
    assert tracking.stats()["recorded"] == 0


def test_anonymous_connections_touch_no_session(tracking, db):
    async def body():
        communicator = await opened()
        assert (await communicator.receive_output(timeout=3))["type"] == "websocket.close"

    async_to_sync(body)()
    assert tracking.stats()["recorded"] == 0


def test_a_tracked_handshake_is_a_request_record_with_its_correlation_id(tracking, user, settings):
    settings.STATE_TRACKING_UNTRACKED_PATHS = []  # the stream's handshake is untracked by default

    async def body():
        headers = [(b"x-correlation-id", b"ws-7"), (b"cookie", b"sessionid=cookie-secret-1")]
        communicator = await opened(user, headers=headers)
        await communicator.receive_json_from(timeout=3)
        await communicator.disconnect()
        await database_sync_to_async(tracking.flush)()

    async_to_sync(body)()
    record = selectors.entry_get(key="request:ws-7")
    assert (record.value["method"], record.value["uri"]) == ("GET", PATH)
    assert record.value["headers"]["cookie"] == "[redacted]"
    assert record.value["headers"]["authorization"] == "[redacted]"
    assert selectors.entry_get(key="request:ws-7:completion").value["status"] == 101
