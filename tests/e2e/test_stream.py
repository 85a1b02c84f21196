"""The event stream end to end: real daphne processes, HTTP writes, a real WebSocket client."""

import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

pytestmark = pytest.mark.e2e


@contextmanager
def open_stream(
    server, token: str, query: str = ""
) -> Iterator[tuple[ClientConnection, dict[str, Any]]]:
    headers = {"Authorization": f"Bearer {token}"}
    with connect(server.ws + query, additional_headers=headers, open_timeout=5) as stream:
        first = receive(stream)
        assert first["type"] == "subscribed", first
        yield stream, first["data"]


def receive(stream: ClientConnection, timeout: float = 5) -> dict[str, Any]:
    return json.loads(stream.recv(timeout=timeout))


def changes(stream: ClientConnection, count: int) -> list[dict[str, Any]]:
    """Return the next `count` state changes, skipping progress messages."""
    found = []
    while len(found) < count:
        message = receive(stream)
        if message["type"] != "progress":
            assert message["type"] == "state_change", message
            found.append(message["data"])
    return found


def assert_nothing_more(stream: ClientConnection) -> None:
    stream.send(json.dumps({"type": "ping"}))
    while (message := receive(stream))["type"] == "progress":
        pass
    assert message == {"type": "pong"}


def test_writes_on_every_process_reach_each_subscriber_in_order(servers, tokens, shared_redis):
    if not shared_redis:
        pytest.skip("Two server processes share a stream through PostgreSQL and Redis only.")
    staff = tokens["e2e-staff"]
    opened = ExitStack()
    subscribers = [
        opened.enter_context(open_stream(server, staff, "?prefixes=spread:"))[0]
        for server in servers
    ]
    written: list[int] = []

    def writer(server, name: str) -> None:
        for i in range(25):
            written.append(server.put(f"spread:{name}", i, staff))

    threads = [threading.Thread(target=writer, args=(s, f"w{n}")) for n, s in enumerate(servers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with opened:
        for stream in subscribers:
            received = [c["revision"] for c in changes(stream, len(written))]
            assert received == sorted(written)
            assert_nothing_more(stream)


def test_resume_with_since_revision_gets_exactly_what_was_missed(servers, tokens):
    staff, alice = tokens["e2e-staff"], tokens["alice"]
    with open_stream(servers[0], alice) as (stream, _):
        seen = servers[0].put("global:resume", 1, staff)
        assert changes(stream, 1)[0]["revision"] == seen

    missed = [servers[i % len(servers)].put("global:resume", i, staff) for i in range(2, 6)]
    servers[0].put("team:not-for-alice", 1, staff)
    with open_stream(servers[-1], alice) as (stream, _):
        stream.send(
            json.dumps({"type": "subscribe", "prefixes": ["global:"], "since_revision": seen})
        )
        assert receive(stream)["data"]["revision"] == seen
        live = servers[0].put("market:after", 1, staff)
        received = changes(stream, len(missed) + 1)
        assert [c["revision"] for c in received] == [*missed, live]
        assert [c["new_value"] for c in received[:-1]] == [2, 3, 4, 5]
        assert_nothing_more(stream)


def test_forbidden_prefix_yields_an_error_and_no_events(servers, tokens):
    staff, alice = tokens["e2e-staff"], tokens["alice"]
    with open_stream(servers[-1], alice) as (stream, _):
        stream.send(json.dumps({"type": "subscribe", "prefixes": ["team:"]}))
        error = receive(stream)
        assert (error["type"], error["data"]["code"]) == ("error", "permission_denied")
        servers[0].put("team:secret", {"pin": 1234}, staff)
        allowed = servers[0].put("global:open", 1, staff)
        (change,) = changes(stream, 1)
        assert change["revision"] == allowed
        assert_nothing_more(stream)


def test_anonymous_handshake_is_closed_4401(servers):
    with connect(servers[0].ws, open_timeout=5) as stream:
        with pytest.raises(Exception) as closed:
            stream.recv(timeout=5)
    assert getattr(closed.value, "rcvd", None) and closed.value.rcvd.code == 4401


def test_malformed_input_is_an_error_and_the_connection_stays_usable(servers, tokens):
    alice = tokens["alice"]
    headers = {"Authorization": f"Bearer {alice}"}
    with connect(servers[0].ws + "?since_revision=%C2%B2", additional_headers=headers,
                 open_timeout=5) as stream:  # fmt: skip
        assert receive(stream)["type"] == "subscribed"  # always first, then the error
        assert receive(stream)["data"]["code"] == "validation_error"
        for message in (
            '{"type": "subscribe", "prefixes": ["global:"], "since_revision": "\\u00b2"}',
            "[" * 2000 + "]" * 2000,
        ):
            stream.send(message)
            error = receive(stream)
            assert (error["type"], error["data"]["code"]) == ("error", "validation_error")
        revision = servers[0].put("global:after-bad-input", 1, tokens["e2e-staff"])
        assert changes(stream, 1)[0]["revision"] == revision
        assert_nothing_more(stream)
