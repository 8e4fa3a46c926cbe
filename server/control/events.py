"""GET /api/events: a WebSocket that pushes every settings change, stream up/down, job and preset event."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import WSMsgType, web

logger = logging.getLogger(__name__)

# A listener that falls this far behind is cut off rather than let memory grow.
QUEUE_LIMIT = 256


class EventHub:
    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[str | None]] = set()

    @property
    def listeners(self) -> int:
        return len(self._queues)

    def publish(self, event_type: str, **payload: Any) -> None:
        """Queue `{"type": event_type, ...payload}` for every listener; never blocks."""
        message = json.dumps({"type": event_type, **payload}, default=str)
        for queue in list(self._queues):
            if queue.qsize() >= QUEUE_LIMIT:
                logger.warning("event listener too slow, disconnecting")
                self._queues.discard(queue)
                queue.put_nowait(None)
            else:
                queue.put_nowait(message)

    async def close(self) -> None:
        for queue in list(self._queues):
            queue.put_nowait(None)
        self._queues.clear()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20.0)
        await ws.prepare(request)
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._queues.add(queue)
        reader = asyncio.create_task(self._drain_incoming(ws))
        try:
            while True:
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    getter.cancel()
                    break
                message = getter.result()
                if message is None:
                    break
                await ws.send_str(message)
        finally:
            self._queues.discard(queue)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await ws.close()
        return ws

    @staticmethod
    async def _drain_incoming(ws: web.WebSocketResponse) -> None:
        """Listeners only listen; reading is how a closed socket is noticed."""
        async for message in ws:
            if message.type == WSMsgType.ERROR:
                break
