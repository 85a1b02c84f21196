"""Hold N WebSocket subscribers on a server while something else writes (bench/run.py uses it).

  python bench/subscribers.py URL TOKEN COUNT PREFIX

Connects COUNT subscribers to PREFIX, prints "READY" once every one has its `subscribed`
message, counts the `state_change` messages they receive, and on SIGTERM (or stdin closing)
prints the total and exits.
"""

import asyncio
import signal
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake


async def subscriber(url: str, ready: list[int], received: list[int]) -> None:
    for attempt in range(5):
        try:
            ws = await connect(url, max_size=None, open_timeout=60)
            break
        except (OSError, InvalidHandshake):
            # A server busy accepting hundreds of connections may drop a handshake.
            await asyncio.sleep(0.5 * (attempt + 1))
    else:
        raise SystemExit("a subscriber could not connect in five attempts")
    async with ws:
        await ws.recv()  # subscribed
        ready[0] += 1
        async for message in ws:
            if message.startswith('{"type":"state_change"'):
                received[0] += 1


async def main(base: str, token: str, count: int, prefix: str) -> None:
    url = f"{base.replace('http', 'ws', 1)}/api/v1/state/events?token={token}&prefixes={prefix}"
    ready, received = [0], [0]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.read(1) or stop.set())
    tasks = []
    for n in range(count):
        tasks.append(asyncio.create_task(subscriber(url, ready, received)))
        if n % 25 == 24:
            await asyncio.sleep(0.1)  # a connection storm would trip the handshake timeout
    while ready[0] < count:
        if any(task.done() for task in tasks):
            failed = next(task for task in tasks if task.done())
            raise SystemExit(f"a subscriber failed: {failed.exception()!r}")
        await asyncio.sleep(0.1)
    print("READY", flush=True)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(received[0], flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
