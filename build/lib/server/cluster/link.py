"""One node's line to the cluster's Redis: a client, one pub/sub subscription, ordered writes, and
reconnection with back-off.

Redis may go away at any time (restarted, a network cut). Nothing here raises into the node for
that: `send` queues a write (applied in order once Redis answers again), the subscription is made
again with back-off (0.2 s doubling to 5 s, with jitter), and on every (re)connection the writes
queued meanwhile are flushed first, then each `on_connect` hook runs (the settings resync, the
node's registration), so a node comes back in step with the others. Pub/sub messages are handed
to the channel's handler on the event loop, in the order Redis published them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

Handler = Callable[[str], None]
Hook = Callable[[], Awaitable[None]]
Write = Callable[[Pipeline], None]

BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 5.0
# A queued write that cannot reach Redis waits; past this many the oldest are dropped (the resync
# after the reconnection reads the state back, so a dropped write costs a stale field at worst).
MAX_QUEUED_WRITES = 10_000
READ_TIMEOUT_S = 1.0
# How long `close` waits for queued writes to reach Redis (a stream's removal, the node's leaving).
FLUSH_ON_CLOSE_S = 2.0
ERRORS = (RedisError, OSError)


def backoff(attempt: int) -> float:
    """0.2, 0.4, 0.8 ... 5 s, each with up to a quarter more at random (nodes do not retry in step)."""
    delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**attempt)
    return delay * (1.0 + random.random() / 4)


def texts(values: Any) -> list[str]:
    """Redis's answer as the strings it is (the client decodes answers; its types say bytes too)."""
    return [str(value) for value in values]


def text_map(values: Any) -> dict[str, str]:
    """A hash as read from Redis, as strings."""
    return {str(key): str(value) for key, value in values.items()}


def redacted(url: str) -> str:
    """The Redis URL without its password, for logs and /api/cluster."""
    scheme, sep, rest = url.partition("://")
    _, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{'***@' if at else ''}{host}" if sep else url


class RedisLink:
    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        # No retries of its own: this class retries, with back-off, and knows what to do meanwhile.
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=2.0,
            socket_timeout=10.0,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=2,
        )
        self._handlers: dict[str, Handler] = {}
        self._hooks: list[Hook] = []
        self._writes: deque[Write] = deque()
        self._queued = asyncio.Event()
        self._flushed = asyncio.Event()
        self._flushed.set()
        self._up = asyncio.Event()  # subscribed, writes flushed and every hook done
        self._head = asyncio.Lock()  # the writer and a reconnection's flush never run the same write twice
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False  # as well as the cancel, which a Redis call under way may swallow
        self.connections = 0  # how many times the link came up (1 after the first start)

    def key(self, *parts: str) -> str:
        """A key or channel under the cluster's prefix: `key("settings", "global")` -> stylize:settings:global."""
        return ":".join((self.prefix, *parts))

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def subscribe(self, channel: str, handler: Handler) -> None:
        """Hand every message on `channel` to `handler` (before `start`)."""
        self._handlers[channel] = handler

    def on_connect(self, hook: Hook) -> None:
        """Run `hook` after every (re)connection, in the order added, before the link counts as up."""
        self._hooks.append(hook)

    async def start(self, wait_s: float) -> None:
        """Connect in the background; wait up to `wait_s` for the first connection (then carry on without)."""
        self._reader = asyncio.create_task(self._read(), name="redis-reader")
        self._writer = asyncio.create_task(self._write(), name="redis-writer")
        try:
            await asyncio.wait_for(self._up.wait(), wait_s)
        except TimeoutError:
            logger.warning("Redis at %s not reachable yet; serving on, reconnecting", redacted(self.url))

    async def close(self) -> None:
        """Give queued writes a moment to land, then stop both tasks and the client."""
        if self.up:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flushed.wait(), FLUSH_ON_CLOSE_S)
        self._closing = True
        for task in (self._reader, self._writer):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self._reader, self._writer) if t is not None), return_exceptions=True)
        await self.redis.aclose()

    # -- writes --------------------------------------------------------------------------------

    def send(self, write: Write) -> None:
        """Queue `write(pipeline)` as one transaction (MULTI/EXEC), after every write queued before it."""
        self._writes.append(write)
        if len(self._writes) > MAX_QUEUED_WRITES:
            self._writes.popleft()
            logger.warning("Redis unreachable: the oldest queued write was dropped (%d queued)", MAX_QUEUED_WRITES)
        self._flushed.clear()
        self._queued.set()

    async def transaction(self, write: Write) -> list[Any]:
        """Run `write(pipeline)` as one transaction now; its results. Raises what Redis raises (not queued)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            write(pipe)
            return list(await pipe.execute())

    async def _write(self) -> None:
        attempt = 0
        while not self._closing:
            if not self._writes:
                self._flushed.set()
                self._queued.clear()
                await self._queued.wait()
                continue
            await self._up.wait()  # while down, the reconnection flushes the queue itself
            try:
                await self._write_head()
            except ERRORS as e:
                if attempt == 0:
                    logger.warning("Redis write failed (%s); %d queued, retrying", e, len(self._writes))
                await asyncio.sleep(backoff(attempt))
                attempt += 1
                continue
            attempt = 0

    async def _write_head(self) -> None:
        async with self._head:
            if self._writes:
                await self.transaction(self._writes[0])
                self._writes.popleft()

    # -- the subscription ----------------------------------------------------------------------

    async def _read(self) -> None:
        attempt = 0
        while not self._closing:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self._handlers)
                await self._queued_writes_flushed()
                for hook in self._hooks:
                    await hook()
                self.connections += 1
                self._up.set()
                if attempt:
                    logger.info("Redis at %s reachable again: resynced", redacted(self.url))
                attempt = 0
                while not self._closing:
                    message = await pubsub.get_message(timeout=READ_TIMEOUT_S)
                    if message is not None:
                        self._dispatch(message)
            except ERRORS as e:
                if self._up.is_set() or attempt == 0:
                    logger.warning("Redis at %s lost (%s); reconnecting with back-off", redacted(self.url), e)
                self._up.clear()
            except Exception:
                # A hook's own failure (not Redis's): the link must not die silently with it.
                logger.exception("Redis link: resync after connecting failed; trying again with back-off")
                self._up.clear()
            finally:
                with contextlib.suppress(*ERRORS):
                    await pubsub.aclose()
            await asyncio.sleep(backoff(attempt))
            attempt += 1

    async def _queued_writes_flushed(self) -> None:
        """Writes made while Redis was away land before the resync reads the state back."""
        await self.redis.ping()
        while self._writes:
            await self._write_head()

    def _dispatch(self, message: dict[str, Any]) -> None:
        handler = self._handlers.get(str(message.get("channel")))
        if handler is None or message.get("type") != "message":
            return
        try:
            handler(str(message["data"]))
        except Exception:
            logger.exception("handling a message on %s failed", message.get("channel"))
