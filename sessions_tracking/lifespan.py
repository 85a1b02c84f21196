"""The ASGI lifespan protocol: write what tracking still buffers when the server shuts down.

uvicorn and granian send `lifespan.shutdown` after their connections have drained; uvicorn
then re-raises SIGTERM with the default handler, so the process dies without running `atexit`
(the hook daphne's clean exit relies on, daphne not speaking lifespan).
"""

import asyncio

from . import services


async def lifespan(scope, receive, send) -> None:
    """Answer startup at once; on shutdown, flush the tracking buffer first."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await asyncio.to_thread(services.tracker.shutdown)
            await send({"type": "lifespan.shutdown.complete"})
            return
