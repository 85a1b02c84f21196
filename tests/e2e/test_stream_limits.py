"""The largest change the store accepts reaches subscribers whole, on every server we document.

daphne runs with the command line of `manage.py serve`; uvicorn and granian with the README's
production commands, run as written (host, port and worker count aside).
"""

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.conf import settings
from websockets.sync.client import ClientConnection, connect

from state import rules, stream
from state.management.commands.serve import daphne_command

from .conftest import ROOT, Server, _free_port, _wait_ready

pytestmark = pytest.mark.e2e

LIMIT = stream.max_message_bytes()


def readme_command(program: str) -> str:
    """Return the README's production command line that starts `program`."""
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.strip().startswith(f".venv/bin/{program} "):
            return line.strip()
    raise AssertionError(f"README.md has no `.venv/bin/{program}` command")


@contextmanager
def started(argv: list[str], env: dict[str, str], log: Path, port: int) -> Iterator[Server]:
    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w")
    )
    try:
        _wait_ready(process, port, log, timeout=30)
        yield Server(port=port, pid=process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def readme_server(program: str, env: dict[str, str], log: Path, taken: set[int]):
    port = _free_port(taken)
    line = readme_command(program)
    for written, here in (("--host 0.0.0.0", "--host 127.0.0.1"), ("--port 8081", f"--port {port}"),
                          ("$(nproc)", "1")):  # fmt: skip
        assert written in line, (written, line)
        line = line.replace(written, here)
    line = line.replace(".venv/bin/", f"{Path(sys.executable).parent}/").removesuffix("&")
    with started(["bash", "-c", f"exec {line}"], env, log, port) as server:
        yield server


@pytest.fixture(scope="module", params=["daphne", "uvicorn", "granian"])
def any_server(request, servers, e2e_env, tmp_path_factory) -> Iterator[tuple[str, Server]]:
    if request.param == "daphne":
        yield "daphne", servers[0]
        return
    log = tmp_path_factory.mktemp(request.param) / "server.log"
    with readme_server(request.param, e2e_env, log, {s.port for s in servers}) as server:
        yield request.param, server


@contextmanager
def open_stream(server: Server, token: str, query: str) -> Iterator[ClientConnection]:
    # The client's own limit (websockets: 1 MiB by default) must be raised as well.
    with connect(server.ws + query, additional_headers={"Authorization": f"Bearer {token}"},
                 open_timeout=5, max_size=LIMIT) as ws:  # fmt: skip
        first = json.loads(ws.recv(timeout=5))
        assert first["type"] == "subscribed", first
        yield ws


def next_message(ws: ClientConnection, timeout: float = 15) -> tuple[dict, int]:
    """Return the next message that is not `progress`, and its size in bytes."""
    while True:
        text = ws.recv(timeout=timeout)
        message = json.loads(text)
        if message["type"] != "progress":
            return message, len(text.encode())


def largest_string(fill: str) -> str:
    """A string value of exactly STATE_MAX_VALUE_BYTES, every character escaped (\\u00XX)."""
    value = fill * ((settings.STATE_MAX_VALUE_BYTES - 2) // 6)
    value += "x" * (settings.STATE_MAX_VALUE_BYTES - rules.value_size(value))
    assert rules.value_size(value) == settings.STATE_MAX_VALUE_BYTES
    return value


def largest_numbers() -> list:
    """A value of STATE_MAX_VALUE_BYTES as the store counts it: floats PostgreSQL writes out."""
    numbers: list = [1e300] * ((settings.STATE_MAX_VALUE_BYTES - 10) // 302)
    numbers.append("x" * (settings.STATE_MAX_VALUE_BYTES - rules.value_size([*numbers, ""])))
    assert rules.value_size(numbers) == settings.STATE_MAX_VALUE_BYTES
    return numbers


def put(server: Server, key: str, value, token: str, **fields) -> int:
    status, body = server.request("PUT", f"/api/v1/state/{key}", token, {"value": value, **fields})
    assert status in (200, 201), body
    return body["data"]["revision"]


def test_largest_values_set_and_overwritten_arrive_whole_and_in_order(any_server, tokens):
    name, server = any_server
    staff = tokens["e2e-staff"]
    key = f"big:{name}:".ljust(256, "k")
    first, second, numbers = largest_string("\x01"), largest_string("\x02"), largest_numbers()
    with open_stream(server, staff, f"?prefixes=big:{name}:,after:{name}") as ws:
        revisions = [
            put(server, key, first, staff),
            # old + new both of the largest size, with the longest source: the largest frame
            put(server, key, second, staff, source="\x01" * settings.STATE_MAX_SOURCE_LENGTH),
            put(server, key, numbers, staff),
            put(server, key, 1, staff),
            put(server, f"after:{name}", "next", staff),
        ]
        received = [next_message(ws) for _ in revisions]
        ws.send(json.dumps({"type": "ping"}))
        assert next_message(ws)[0] == {"type": "pong"}

    changes = [message["data"] for message, _ in received]
    kinds = [message["type"] for message, _ in received]
    assert kinds == ["state_change"] * 5, kinds
    assert [c["revision"] for c in changes] == revisions
    assert [(c["old_value"], c["new_value"]) for c in changes[:2]] == [
        (None, first), (first, second)
    ]  # fmt: skip
    assert changes[2]["old_value"] == second
    # On PostgreSQL 1e300 comes back written out in full (an int in Python): the same number.
    assert [float(n) for n in changes[2]["new_value"][:-1]] == numbers[:-1]
    assert [float(n) for n in changes[3]["old_value"][:-1]] == numbers[:-1]
    assert (changes[3]["new_value"], changes[4]["key"]) == (1, f"after:{name}")
    sizes = [size for _, size in received]
    assert max(sizes) <= LIMIT
    # The bound is tight: the largest frame misses it only by the digits of small numbers.
    assert sizes[1] > LIMIT - 64, (sizes[1], LIMIT)
    print(f"\n{name}: largest frame delivered {sizes[1]} bytes (limit {LIMIT})")


def test_a_message_the_server_cannot_send_closes_with_the_last_delivered_revision(
    servers, e2e_env, tokens, tmp_path
):
    staff = tokens["e2e-staff"]
    port = _free_port({s.port for s in servers})
    argv = daphne_command(host="127.0.0.1", port=port)
    argv = [("4096" if arg == str(LIMIT) else arg) for arg in argv]  # a deliberately small limit
    with started(argv, e2e_env, tmp_path / "small.log", port) as small:
        with open_stream(small, staff, "?prefixes=cut:") as ws:
            delivered = put(servers[0], "cut:a", "small", staff)
            too_big = put(servers[0], "cut:a", "y" * 10_000, staff)
            after = put(servers[0], "cut:a", "after", staff)
            change, _ = next_message(ws)
            assert change["data"]["revision"] == delivered
            error, _ = next_message(ws)
            last = error["data"]["last_revision"]
            assert error == {"type": "error", "data": {
                "code": "send_failed", "last_revision": last,
                "message": "A message could not be sent on this connection; resume from "
                           "last_revision.",
            }}  # fmt: skip
            # Delivered up to just before the frame that failed. The servers' request tracking
            # may have written other keys in between (this connection does not see them), so it
            # can be past `delivered`; never at or past the failed one.
            assert delivered <= last < too_big
            with pytest.raises(Exception) as closed:
                next_message(ws)
            assert closed.value.rcvd.code == stream.LAGGED_CLOSE_CODE

    # Resuming from last_revision on a server with the right limit loses nothing.
    with open_stream(servers[0], staff, f"?prefixes=cut:&since_revision={last}") as ws:
        replayed = [next_message(ws)[0]["data"] for _ in range(2)]
    assert [(c["revision"], c["new_value"]) for c in replayed] == [
        (too_big, "y" * 10_000), (after, "after")
    ]  # fmt: skip
