"""The `statehub` command, run as a real process against real servers."""

import io
import json
import os
import subprocess
import sys
import time
from datetime import datetime

import pytest

from statehub_client import Client
from statehub_client.cli import main

from .conftest import ROOT, new_store

pytestmark = pytest.mark.e2e

COMMANDS = ["get", "put", "del", "cas", "incr", "keys", "watch", "export", "import", "snapshot"]


def _env(url: str, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEHUB_")}
    env.update(PYTHONPATH=str(ROOT / "client" / "src"), STATEHUB_URL=url)
    if token is not None:
        env["STATEHUB_TOKEN"] = token
    return env


def statehub(server, token, *args: str, stdin: str | None = None, check: int | None = 0):
    """Run `statehub ARGS` (as `python -m statehub_client`); return the finished process."""
    done = subprocess.run(
        [sys.executable, "-m", "statehub_client", *args],
        input=stdin,
        env=_env(server.url, token),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check is not None:
        assert done.returncode == check, (done.returncode, done.stdout, done.stderr)
    return done


def cli(server, token, *args: str, stdin: str | None = None, check: int = 0):
    """Run the command in this process (what `statehub` runs); return (stdout, stderr)."""
    options = ["--url", server.url] + (["--token", token] if token else [])
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin or "")
    try:
        code = main([*options, *args])
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.stdin = saved
    return code


def test_every_command_has_help(server, capsys):
    for command in COMMANDS:
        assert cli(server, None, command, "--help") == 0
        assert capsys.readouterr().out.startswith(f"usage: statehub {command}")
    assert cli(server, None, "--help") == 0
    assert "version_conflict" in capsys.readouterr().out  # the exit codes


def test_get_put_del_cas_incr_keys_and_their_exit_codes(server, store, tmp_path, capsys):
    token = store.staff_token

    def out(*args: str, stdin: str | None = None, check: int = 0):
        assert cli(server, token, *args, stdin=stdin) == check
        printed = capsys.readouterr()
        return json.loads(printed.out) if check == 0 and printed.out else printed.err

    put = out("put", "cli:a", '{"n": 1}', "--meta", "o=t")
    assert (put["value"], put["version"], put["metadata"]) == ({"n": 1}, 1, {"o": "t"})
    (tmp_path / "v.json").write_text('[1, "two"]')
    out("put", "cli:b", "--file", str(tmp_path / "v.json"), "--ttl", "60")
    out("put", "cli:c", stdin='"from stdin"')
    out("put", "cli:d", "plain words", "--string")
    assert out("get", "cli:b") == [1, "two"]
    assert out("get", "cli:c") == "from stdin"
    entry = out("get", "cli:d", "--entry")
    assert (entry["value"], entry["metadata"]) == ("plain words", {})
    assert cli(server, token, "keys", "cli:") == 0
    assert capsys.readouterr().out.split() == ["cli:a", "cli:b", "cli:c", "cli:d"]

    assert out("cas", "cli:n", "5", "--expected", "null") == {"swapped": True, "version": 1}
    assert out("incr", "cli:n", "3") == 8
    assert out("del", "cli:a") == {"key": "cli:a", "deleted": True}

    assert out("get", "cli:a", check=3).startswith("statehub: not_found")
    assert '"current":8' in out("cas", "cli:n", "1", "--expected", "5", check=10)
    assert '"current_version":2' in out("put", "cli:n", "1", "--expected-version", "9", check=9)
    out("incr", "cli:d", check=11)
    out("put", "cli:x", "not json", check=2)
    assert cli(server, store.tokens["alice"], "put", "global:x", "1") == 5
    assert cli(server, "wrong", "get", "global:x") == 4
    assert cli(server, None, "get", "global:x") == 2
    assert main(["--url", "http://127.0.0.1:9", "--token", token, "get", "k"]) == 17

    # The same through a real process: the exit status, and a value from stdin.
    put = statehub(server, token, "put", "cli:p", stdin="[true]")
    assert json.loads(put.stdout)["value"] == [True]
    assert statehub(server, token, "get", "cli:gone", check=3).stdout == ""


def test_export_import_round_trip_into_an_empty_store_is_exact(
    server, store, start_server, tmp_path
):
    values = {
        "exp:nested": {"a": [1, 2.5, None, True, {"b": "ünïcödé ✓"}], "big": 2**62},
        "exp:string": 'line\nbreak "quoted" \\ back',
        "exp:number": -0.125,
        "exp:false": False,
        "exp:empty": {},
    }
    with Client(server.url, store.staff_token) as source:
        for key, value in values.items():
            source.put(key, value)
        source.put("exp:meta", [], metadata={"owner": "ops", "note": "x=y"})
        source.put("exp:expiring", "soon", metadata={"kind": "session"}, ttl=3600)
        source.put("exp:short", 1, ttl=1)
        time.sleep(1.1)  # exp:short has expired: reads (and export) treat it as absent
        original = list(source.entries("exp:", include_metadata=True))
    assert "exp:short" not in [e.key for e in original] and len(original) == 7

    with new_store("client_empty", tmp_path) as empty:
        target = start_server(on=empty)
        env = _env(server.url, store.staff_token)
        module = f"{sys.executable} -m statehub_client"
        pipe = subprocess.run(
            f"{module} export exp: | {module} --url {target.url} --token {empty.staff_token} "
            "import",
            shell=True,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert pipe.returncode == 0, pipe.stderr
        with Client(target.url, empty.staff_token) as copy:
            copied = list(copy.entries("", include_metadata=True))
            assert copy.stats().total_keys == len(original)
        target.stop()

    assert [(e.key, e.value, e.metadata) for e in copied] == [
        (e.key, e.value, e.metadata) for e in original
    ]
    assert all(type(c.value) is type(o.value) for c, o in zip(copied, original, strict=True))
    for copy_entry, entry in zip(copied, original, strict=True):
        if entry.expires_at is None:
            assert copy_entry.expires_at is None, entry.key
        else:  # the API's ttl is whole seconds
            assert abs((copy_entry.expires_at - entry.expires_at).total_seconds()) <= 1.5


def test_watch_prints_one_json_line_per_change_and_resumes_with_since(server, store):
    token = store.staff_token
    with Client(server.url, token) as client:
        start = client.stats().version
        first = [client.put(f"cw:{i}", i).revision for i in range(3)]
        lines = _watch_lines(server, token, start, 3)
        assert [line["revision"] for line in lines] == first
        assert [(line["key"], line["new_value"]) for line in lines] == [
            (f"cw:{i}", i) for i in range(3)
        ]
        later = [client.put(f"cw:{i}", i * 10).revision for i in range(2)]
        resumed = _watch_lines(server, token, lines[-1]["revision"], 2)
        assert [line["revision"] for line in resumed] == later


def _watch_lines(server, token: str, since: int, count: int) -> list[dict]:
    process = subprocess.Popen(
        [sys.executable, "-m", "statehub_client", "watch", "cw:", "--since", str(since)],
        env=_env(server.url, token),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        return [json.loads(process.stdout.readline()) for _ in range(count)]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_snapshot_commands(server, store, tmp_path):
    token = store.staff_token
    created = json.loads(statehub(server, token, "snapshot", "create", "--label", "cli").stdout)
    assert created["label"] == "cli"
    listed = statehub(server, token, "snapshot", "list").stdout.splitlines()
    assert created["id"] in [json.loads(line)["id"] for line in listed]
    shown = json.loads(statehub(server, token, "snapshot", "show", str(created["id"])).stdout)
    assert shown == created
    target = tmp_path / "s.jsonl.gz"
    statehub(server, token, "snapshot", "download", str(created["id"]), str(target))
    assert target.stat().st_size == created["compressed_size"]
    dry = statehub(server, token, "snapshot", "restore", str(created["id"]), "--dry-run")
    assert json.loads(dry.stdout)["dry_run"] is True
    statehub(server, token, "snapshot", "delete", str(created["id"]))
    statehub(server, token, "snapshot", "show", str(created["id"]), check=3)
    assert datetime.fromisoformat(created["created_at"])
