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

logger = logging.getLogger(__name__)

MAX_PREFIXES = 100
MAX_PREFIX_LENGTH = 256


class InvalidMessage(Exception):
    """A client message that does not follow the protocol."""


def parse_prefixes(value: Any) -> list[str]:
    if (
        not isinstance(value, list)
        or not 0 < len(value) <= MAX_PREFIXES
        or not all(isinstance(p, str) and len(p) <= MAX_PREFIX_LENGTH for p in value)
    ):
        raise InvalidMessage(
            f"prefixes must be a list of 1-{MAX_PREFIXES} strings of at most "
            f"{MAX_PREFIX_LENGTH} characters."
        )
    return value


def parse_revision(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidMessage("since_revision must be a whole number >= 0.")
    return value


class StateEventsConsumer(AsyncWebsocketConsumer):
    subscription: stream.Subscription | None = None
    sender: asyncio.Task | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.close(code=stream.UNAUTHENTICATED_CLOSE_CODE)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        try:
            prefixes = query.get("prefixes")
            prefixes = parse_prefixes(prefixes[0].split(",")) if prefixes else None
            since = parse_revision(query.get("since_revision", [None])[0])
        except InvalidMessage as exc:
            await self.send_json(stream.error_message("validation_error", str(exc)))
            await self.close(code=4400)
            return
        # Loads the user's group rules once, so access checks on the loop never hit the database.
        await database_sync_to_async(access.readable_prefixes)(user)
        self.subscription = await stream.get_hub().open(
            user=user, send=self._send_text, close=self._close
        )
        await self.subscription.start(prefixes=prefixes, since_revision=since)
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
        try:
            message = json.loads(text or "")
        except ValueError as exc:
            raise InvalidMessage("Messages are JSON objects with a 'type'.") from exc
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "ping":
            self.subscription.queue({"type": "pong"})
            connection_heartbeat(self.scope)  # the session's heartbeat (buffered, coalesced)
        elif kind == "subscribe":
            await self.subscription.subscribe(
                prefixes=parse_prefixes(message.get("prefixes")),
                since_revision=parse_revision(message.get("since_revision")),
            )
        elif kind == "unsubscribe":
            self.subscription.unsubscribe(prefixes=parse_prefixes(message.get("prefixes")))
        else:
            raise InvalidMessage("type must be one of 'subscribe', 'unsubscribe', 'ping'.")

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
