"""The event stream consumer: authenticates, keeps its subscription, forwards frames."""

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from sessions_tracking.middleware import connection_heartbeat

from . import access, stream
from .rules import INT64_MAX

logger = logging.getLogger(__name__)

# The fields of each client message; any other is refused, so a typo (`since_revison`) is an
# error, not a silent live subscription, and nothing nested can hide in a message.
MESSAGE_FIELDS = {
    "ping": {"type"},
    "subscribe": {"type", "prefixes", "since_revision"},
    "unsubscribe": {"type", "prefixes"},
}


class InvalidMessage(Exception):
    """A client message that does not follow the protocol."""


def parse_prefixes(value: Any) -> list[str]:
    if (
        not isinstance(value, list)
        or not 0 < len(value) <= stream.MAX_PREFIXES
        or not all(isinstance(p, str) and len(p) <= stream.MAX_PREFIX_LENGTH for p in value)
    ):
        raise InvalidMessage(
            f"prefixes must be a list of 1-{stream.MAX_PREFIXES} strings of at most "
            f"{stream.MAX_PREFIX_LENGTH} characters."
        )
    return value


def parse_query_prefixes(text: str | None) -> list[str] | None:
    """Read ?prefixes=: a comma-separated list (an empty item would mean every key)."""
    if text is None:
        return None
    prefixes = parse_prefixes(text.split(","))
    if "" in prefixes:
        raise InvalidMessage(
            "prefixes on the URL are a comma-separated list of non-empty prefixes."
        )
    return prefixes


def parse_revision(value: Any) -> int | None:
    """Read a message's since_revision: a JSON integer >= 0 (null or absent: none)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT64_MAX:
        raise InvalidMessage("since_revision must be a JSON integer >= 0.")
    return value


def parse_query_revision(text: str | None) -> int | None:
    """Read ?since_revision=: ASCII digits (isdecimal alone admits "٣"; isdigit even "²")."""
    if text is None:
        return None
    if not (text.isascii() and text.isdecimal() and len(text) <= 19) or int(text) > INT64_MAX:
        raise InvalidMessage("since_revision must be a whole number >= 0.")
    return int(text)


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    message = dict(pairs)
    if len(message) != len(pairs):
        raise InvalidMessage("A message may not repeat a field.")
    return message


def parse_message(text: str | None) -> dict[str, Any]:
    """Parse a client message: a JSON object of a known type with only its own fields."""
    try:
        message = json.loads(text or "", object_pairs_hook=_refuse_duplicates)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than it parses
        raise InvalidMessage("Messages are JSON objects with a 'type'.") from exc
    kind = message.get("type") if isinstance(message, dict) else None
    if not isinstance(kind, str) or kind not in MESSAGE_FIELDS:
        raise InvalidMessage("type must be one of 'subscribe', 'unsubscribe', 'ping'.")
    unknown = sorted(message.keys() - MESSAGE_FIELDS[kind])
    if unknown:
        raise InvalidMessage(f"Unknown fields for '{kind}': {', '.join(unknown)}.")
    return message


class StateEventsConsumer(AsyncWebsocketConsumer):
    subscription: stream.Subscription | None = None
    sender: asyncio.Task | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.close(code=stream.UNAUTHENTICATED_CLOSE_CODE)
            return
        # The URL subscribes like a first `subscribe` message: what is valid applies, and an
        # error names the rest after `subscribed`, which is always the first message.
        query = parse_qs(
            self.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
        )
        refused = []
        try:
            prefixes = parse_query_prefixes(query.get("prefixes", [None])[0])
        except InvalidMessage as exc:
            prefixes = None
            refused.append(stream.error_message("validation_error", str(exc)))
        try:
            since = parse_query_revision(query.get("since_revision", [None])[0])
        except InvalidMessage as exc:
            since = None
            refused.append(stream.error_message("validation_error", str(exc)))
        # Loads the user's group rules once, so access checks on the loop never hit the database.
        await database_sync_to_async(access.readable_prefixes)(user)
        self.subscription = await stream.get_hub().open(
            user=user, send=self._send_text, close=self._close
        )
        await self.subscription.start(prefixes=prefixes, since_revision=since, refused=refused)
        self.sender = asyncio.create_task(self._run())

    async def disconnect(self, code: int) -> None:
        if self.sender is not None:
            self.sender.cancel()
        if self.subscription is not None:
            self.subscription.hub.close(self.subscription)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.subscription is None:
            return
        try:
            await self._handle(text_data)
        except InvalidMessage as exc:
            self.subscription.queue(stream.error_message("validation_error", str(exc)))
        except stream.SubscriptionError as exc:
            self.subscription.queue(exc.message)

    async def _handle(self, text: str | None) -> None:
        message = parse_message(text)
        kind = message["type"]
        if kind == "ping":
            self.subscription.queue({"type": "pong"})
            connection_heartbeat(self.scope)  # the session's heartbeat (buffered, coalesced)
        elif kind == "subscribe":
            await self.subscription.subscribe(
                prefixes=parse_prefixes(message.get("prefixes")),
                since_revision=parse_revision(message.get("since_revision")),
            )
        else:
            self.subscription.unsubscribe(prefixes=parse_prefixes(message.get("prefixes")))

    async def _run(self) -> None:
        try:
            await self.subscription.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("The event stream of a connection failed; closing it.")
            await self.close(code=1011)

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.send(text_data=stream.encode(message))

    async def _send_text(self, text: str) -> None:
        # Straight to the server: the hot path of fan-out, one call per frame and connection.
        await self.base_send({"type": "websocket.send", "text": text})

    async def _close(self, code: int) -> None:
        await self.close(code=code)
