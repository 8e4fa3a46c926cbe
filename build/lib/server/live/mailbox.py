"""A one-item mailbox where a newer item replaces an unread one: the newest frame wins."""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class MailboxClosed(Exception):
    """The producer ended; nothing more will arrive."""


class LatestMailbox(Generic[T]):
    def __init__(self) -> None:
        self._item: T | None = None
        self._closed = False
        self._ready = asyncio.Event()

    def put(self, item: T) -> bool:
        """Store `item`; True when it replaced one nobody had read (a dropped item)."""
        replaced = self._item is not None
        self._item = item
        self._ready.set()
        return replaced

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def get(self) -> T:
        await self._ready.wait()
        item = self._item
        if item is None:
            raise MailboxClosed
        self._item = None
        if not self._closed:
            self._ready.clear()
        return item
