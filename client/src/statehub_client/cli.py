"""The `statehub` command: the client's calls from a shell, one JSON value or line per result."""

import argparse
import json
import os
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from . import errors
from .client import Client
from .models import Entry

DEFAULT_URL = "http://127.0.0.1:8081"
EXIT_CODES = """exit status:
  0 ok, 1 other error, 2 usage, 3 not_found, 4 unauthenticated, 5 permission_denied,
  6 invalid_key, 7 validation_error, 8 value_too_large, 9 version_conflict, 10 cas_failed,
  11 not_a_number, 12 method_not_allowed, 13 unsupported_media_type, 14 rate_limited,
  15 unavailable, 16 internal_error, 17 server unreachable, 18 resync required (watch)"""


class UsageError(Exception):
    """A bad argument; reported like argparse's own errors (exit status 2)."""


def _dump(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    raise TypeError(f"{type(value).__name__} is not JSON")


def _print(data: Any) -> None:
    print(_dump(data), flush=True)


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise UsageError(
            f"{what} is not JSON: {text!r} (for a plain string use --string)"
        ) from None


def _metadata(pairs: list[str] | None) -> dict[str, str] | None:
    if pairs is None:
        return None
    found = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--meta takes NAME=VALUE, not {pair!r}")
        found[name] = value
    return found


# --- commands ---------------------------------------------------------------------------------


def cmd_get(client: Client, args) -> None:
    entry = client.get(args.key, include_metadata=args.entry)
    _print(asdict(entry) if args.entry else entry.value)


def cmd_put(client: Client, args) -> None:
    if args.file is not None and args.value is not None:
        raise UsageError("give VALUE or --file, not both")
    if args.file is not None:
        text = Path(args.file).read_text()
    elif args.value is None or args.value == "-":
        text = sys.stdin.read()
    else:
        text = args.value
    if args.string:
        value = text
    else:
        value = _json_arg(text, "VALUE")
    entry = client.put(
        args.key,
        value,
        metadata=_metadata(args.meta),
        ttl=args.ttl,
        expected_version=args.expected_version,
        source=args.source,
    )
    _print(asdict(entry))


def cmd_del(client: Client, args) -> None:
    client.delete(args.key, expected_version=args.expected_version)
    _print({"key": args.key, "deleted": True})


def cmd_cas(client: Client, args) -> None:
    if (args.expected is None) == (args.expected_version is None):
        raise UsageError("give exactly one of --expected and --expected-version")
    new_value = args.new_value if args.string else _json_arg(args.new_value, "NEW_VALUE")
    kwargs: dict[str, Any] = {"expected_version": args.expected_version}
    if args.expected is not None:
        kwargs["expected"] = _json_arg(args.expected, "--expected")
    result = client.cas(args.key, new_value=new_value, ttl=args.ttl, **kwargs)
    _print(asdict(result))


def cmd_incr(client: Client, args) -> None:
    _print(client.incr(args.key, args.by, ttl=args.ttl).value)


def cmd_keys(client: Client, args) -> None:
    for key in client.keys(args.prefix):
        print(key, flush=False)
    sys.stdout.flush()


def cmd_watch(client: Client, args) -> None:
    watch = client.watch(
        args.prefixes, since_revision=args.since, progress_interval=args.progress_interval
    )
    with watch:
        for change in watch:
            _print(change.as_json())


def cmd_export(client: Client, args) -> None:
    out = open(args.output, "w") if args.output else sys.stdout  # noqa: SIM115
    try:
        for entry in client.entries(args.prefix, include_metadata=True):
            out.write(_dump(export_line(entry)) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
        else:
            out.flush()


def export_line(entry: Entry) -> dict[str, Any]:
    """One line of `export`: what a fresh store needs to hold the same entry."""
    return {
        "key": entry.key,
        "value": entry.value,
        "metadata": entry.metadata or {},
        "expires_at": entry.expires_at,
    }


def import_operation(line: dict[str, Any], now: datetime) -> dict[str, Any] | None:
    """Return the bulk `set` for one exported line, or None if it has expired since."""
    operation = {
        "op": "set",
        "key": line["key"],
        "value": line["value"],
        "metadata": line.get("metadata") or {},
    }
    if line.get("expires_at"):
        remaining = (datetime.fromisoformat(line["expires_at"]) - now).total_seconds()
        if remaining <= 0:
            return None
        # The API takes whole seconds: the copy expires within a second of the original.
        operation["ttl"] = max(1, round(remaining))
    elif "ttl" in operation["metadata"]:
        print(
            f"statehub: warning: {line['key']} has a 'ttl' metadata item but no expiry; "
            "the store will give the copy an expiry from it",
            file=sys.stderr,
        )
    return operation


def cmd_import(client: Client, args) -> None:
    source: IO[str] = open(args.file) if args.file not in (None, "-") else sys.stdin  # noqa: SIM115
    imported = skipped = 0
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal imported
        if batch:
            client.bulk(batch, atomic=True, source=args.source)
            imported += len(batch)
            batch.clear()

    try:
        for number, text in enumerate(source, 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
                operation = import_operation(line, datetime.now(UTC))
            except (ValueError, KeyError, TypeError) as exc:
                raise UsageError(f"line {number} is not an exported entry: {exc}") from None
            if operation is None:
                skipped += 1
                continue
            batch.append(operation)
            if len(batch) >= args.batch_size:
                flush()
        flush()
    finally:
        if source is not sys.stdin:
            source.close()
    print(f"imported {imported} keys ({skipped} expired, skipped)", file=sys.stderr)


def cmd_snapshot(client: Client, args) -> None:
    action = args.action
    if action == "create":
        _print(asdict(client.create_snapshot(args.label)))
    elif action == "list":
        for snapshot in client.list_snapshots():
            _print(asdict(snapshot))
    elif action == "show":
        _print(asdict(client.get_snapshot(args.id)))
    elif action == "download":
        size = client.download_snapshot(args.id, args.output)
        print(f"{size} bytes to {args.output}", file=sys.stderr)
    elif action == "restore":
        _print(asdict(client.restore_snapshot(args.id, dry_run=args.dry_run)))
    elif action == "delete":
        client.delete_snapshot(args.id)
        _print({"id": args.id, "deleted": True})


# --- the parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="statehub",
        description="Read, write, watch, export and snapshot a statehub store.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("STATEHUB_URL", DEFAULT_URL),
        help=f"server root (env STATEHUB_URL, default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token", default=os.environ.get("STATEHUB_TOKEN"), help="API token (env STATEHUB_TOKEN)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help,
            description=help,
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        return sub

    get = command("get", cmd_get, "Print the value of KEY as JSON.")
    get.add_argument("key")
    get.add_argument(
        "--entry",
        action="store_true",
        help="print the whole entry (version, revision, times, metadata)",
    )

    put = command("put", cmd_put, "Set KEY to a JSON value from VALUE, --file or stdin.")
    put.add_argument("key")
    put.add_argument("value", nargs="?", help="JSON; '-' or nothing reads stdin")
    put.add_argument("--file", help="read the value from this file")
    put.add_argument("--string", action="store_true", help="take the value as a plain string")
    put.add_argument("--ttl", type=int, help="expire after this many seconds")
    put.add_argument(
        "--meta",
        action="append",
        metavar="NAME=VALUE",
        help="a metadata item (repeat; replaces the metadata map)",
    )
    put.add_argument(
        "--expected-version", type=int, help="only if KEY is at this version (0: must not exist)"
    )
    put.add_argument("--source", help="who is writing (recorded in the audit log)")

    delete = command("del", cmd_del, "Delete KEY.")
    delete.add_argument("key")
    delete.add_argument("--expected-version", type=int, help="only if KEY is at this version")

    cas = command(
        "cas",
        cmd_cas,
        "Compare-and-swap: set KEY to NEW_VALUE if it holds "
        "--expected (null: absent) or is at --expected-version.",
    )
    cas.add_argument("key")
    cas.add_argument("new_value", help="JSON; null deletes")
    cas.add_argument("--expected", help="the JSON value KEY must hold (null: must be absent)")
    cas.add_argument("--expected-version", type=int)
    cas.add_argument("--string", action="store_true", help="take NEW_VALUE as a plain string")
    cas.add_argument("--ttl", type=int)

    incr = command("incr", cmd_incr, "Add BY (default 1) to the integer at KEY; print it.")
    incr.add_argument("key")
    incr.add_argument("by", nargs="?", type=int, default=1)
    incr.add_argument("--ttl", type=int, help="expiry when this creates the key")

    keys = command("keys", cmd_keys, "Print the keys under PREFIX, one a line.")
    keys.add_argument("prefix", nargs="?", default="")

    watch = command(
        "watch",
        cmd_watch,
        "Print each change under the prefixes as a JSON line; "
        "resume with --since <last revision printed>.",
    )
    watch.add_argument("prefixes", nargs="+", metavar="PREFIX")
    watch.add_argument("--since", type=int, help="start after this revision (default: now)")
    watch.add_argument(
        "--progress-interval",
        type=float,
        default=10.0,
        help="the server's STATE_PROGRESS_INTERVAL_SECS (silence = 2x this)",
    )

    export = command(
        "export",
        cmd_export,
        "Write the entries under PREFIX as JSON lines (key, value, metadata, expires_at).",
    )
    export.add_argument("prefix", nargs="?", default="")
    export.add_argument("--output", "-o", help="file to write (default stdout)")

    load = command(
        "import",
        cmd_import,
        "Write exported JSON lines into the store (expired lines are skipped).",
    )
    load.add_argument("file", nargs="?", help="file to read (default stdin)")
    load.add_argument("--batch-size", type=int, default=500, help="keys per atomic bulk")
    load.add_argument("--source", default="import")

    snapshot = command(
        "snapshot", cmd_snapshot, "Take, list, show, download, restore or delete snapshots (staff)."
    )
    actions = snapshot.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("create", help="take a snapshot now").add_argument("--label", default="")
    actions.add_parser("list", help="one JSON line per snapshot")
    actions.add_parser("show", help="one snapshot").add_argument("id", type=int)
    download = actions.add_parser("download", help="save the snapshot file")
    download.add_argument("id", type=int)
    download.add_argument("output")
    restore = actions.add_parser("restore", help="replace the store with the snapshot")
    restore.add_argument("id", type=int)
    restore.add_argument("--dry-run", action="store_true", help="verify only")
    actions.add_parser("delete", help="delete a snapshot").add_argument("id", type=int)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("no token: pass --token or set STATEHUB_TOKEN")
    try:
        with Client(args.url, args.token, timeout=args.timeout) as client:
            args.handler(client, args)
    except UsageError as exc:
        parser.error(str(exc))
    except errors.StatehubError as exc:
        details = getattr(exc, "details", None)
        print(f"statehub: {exc}" + (f" {_dump(details)}" if details else ""), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `statehub watch ... | head`
        sys.stderr.close()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
