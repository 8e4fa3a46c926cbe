"""GET /api/events: a WebSocket that pushes every settings change, stream up/down, job and preset event.

Every message is one JSON object with its `type` and `ts` (when it was published, ISO 8601 UTC);
the models below describe each type for the API contract. A listener may ask for less
(`EventsQuery`): some types only, or what concerns one stream or one name.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from collections.abc import Callable
from typing import Any, Literal, TypeAlias

from aiohttp import WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from server.control.settings import Source, StyleSettings, name_scope
from server.fields import NAME_PATTERN

logger = logging.getLogger(__name__)

# A listener that falls this far behind is cut off rather than let memory grow.
QUEUE_LIMIT = 256
CLOSE_TIMEOUT_S = 0.5


def timestamp() -> str:
    """Now as ISO 8601 UTC to the millisecond: 2026-11-30T13:25:57.123Z."""
    now = datetime.datetime.now(datetime.UTC)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Event(BaseModel):
    ts: str = Field(default_factory=timestamp, description="when it was published, ISO 8601 UTC")


class SettingsEvent(_Event):
    """Global or per-stream settings changed, from any control path."""

    type: Literal["settings"] = "settings"
    scope: str = Field(description='"global" or a stream id')
    source: Source
    changed: dict[str, Any]
    settings: StyleSettings


class StreamEvent(_Event):
    """A stream came up or went down (with why)."""

    type: Literal["stream"] = "stream"
    action: Literal["up", "down"]
    stream_id: str
    streams: int = Field(description="streams live now")
    reason: str | None = Field(None, description="down only: hung up, connection failed, no frames ...")


class JobEvent(_Event):
    """A render job changed: queued, started, progress, completed, failed, cancelled, deleted."""

    type: Literal["job"] = "job"
    action: Literal["queued", "started", "progress", "completed", "failed", "cancelled", "deleted"]
    job: dict[str, Any] = Field(description="the job as GET /api/jobs/{id} shows it")


class PresetEvent(_Event):
    """A custom preset was created, updated or deleted, or a preset applied."""

    type: Literal["preset"] = "preset"
    action: Literal["created", "updated", "deleted", "applied"]
    preset_id: str
    preset: dict[str, Any] | None = None
    scope: str | None = None
    subject: str | None = None
    prompt: str | None = None


class RecordingEvent(_Event):
    """A name's recording started, stopped (asked to, or its disk share filled) or was deleted."""

    type: Literal["recording"] = "recording"
    action: Literal["started", "stopped", "deleted"]
    scope: str = Field(description="the recorded name's settings scope (name:<name>): ?name= filters on it")
    recording: dict[str, Any] = Field(description="id, name, state and stop_reason")


EVENT_TYPES: list[type[BaseModel]] = [SettingsEvent, StreamEvent, JobEvent, PresetEvent, RecordingEvent]
Event: TypeAlias = SettingsEvent | StreamEvent | JobEvent | PresetEvent | RecordingEvent


EVENT_TYPE_NAMES = ("settings", "stream", "job", "preset", "recording")


class EventsQuery(BaseModel):
    """What one listener wants; every event when nothing is asked."""

    model_config = ConfigDict(extra="forbid")
    types: str | None = Field(None, description="comma-separated event types: settings, stream, job, preset, recording")
    stream: str | None = Field(
        None, min_length=1, max_length=64, description="only what concerns this stream id (and global changes)"
    )
    name: str | None = Field(
        None, pattern=NAME_PATTERN, description="only what concerns this stream name (and global changes)"
    )

    @field_validator("types")
    @classmethod
    def _known_types(cls, value: str | None) -> str | None:
        if value is not None:
            unknown = [part for part in value.split(",") if part not in EVENT_TYPE_NAMES]
            if unknown:
                raise ValueError(f"unknown event type {unknown[0]!r}; known: {', '.join(EVENT_TYPE_NAMES)}")
        return value

    def wants(self, event: dict[str, Any]) -> bool:
        """Whether one decoded event passes: its type is asked for, and it concerns the stream or name
        asked for (global changes concern every one; jobs none)."""
        if self.types is not None and event.get("type") not in self.types.split(","):
            return False
        subjects = {scope for scope in (self.stream, self.name and name_scope(self.name)) if scope}
        if not subjects:
            return True
        about = event.get("scope", event.get("stream_id"))
        return about == "global" or about in subjects

    @property
    def everything(self) -> bool:
        return self.types is None and self.stream is None and self.name is None


def event_message(event: Event) -> str:
    """One event as listeners receive it: its model as JSON, the fields it leaves empty left out."""
    return event.model_dump_json(exclude_none=True)


class EventHub:
    def __init__(self) -> None:
        # Each listener's queue with what it asked for (None: everything).
        self._queues: dict[asyncio.Queue[str | None], EventsQuery | None] = {}
        # In-process observers of every event, decoded (the monitor's recent activity).
        self._watchers: list[Callable[[dict[str, Any]], None]] = []

    @property
    def listeners(self) -> int:
        return len(self._queues)

    def add_watcher(self, watcher: Callable[[dict[str, Any]], None]) -> None:
        self._watchers.append(watcher)

    def remove_watcher(self, watcher: Callable[[dict[str, Any]], None]) -> None:
        self._watchers.remove(watcher)

    def publish(self, event: Event) -> None:
        """Queue `event` for every listener; never blocks."""
        self.deliver(event_message(event))

    def deliver(self, message: str) -> None:
        """Queue one encoded event for every listener of this hub that wants it."""
        decoded: dict[str, Any] | None = None
        if self._watchers:
            decoded = json.loads(message)
            for watcher in list(self._watchers):
                watcher(decoded)
        for queue, wanted in list(self._queues.items()):
            if wanted is not None:
                # Decoded once, and only when a listener filters: a cluster's events arrive encoded.
                decoded = json.loads(message) if decoded is None else decoded
                if not wanted.wants(decoded):
                    continue
            if queue.qsize() >= QUEUE_LIMIT:
                logger.warning("event listener too slow, disconnecting")
                self._queues.pop(queue, None)
                queue.put_nowait(None)
            else:
                queue.put_nowait(message)

    async def close(self) -> None:
        for queue in list(self._queues):
            queue.put_nowait(None)
        self._queues.clear()

    async def handle(self, request: web.Request, wanted: EventsQuery | None = None) -> web.WebSocketResponse:
        """Push the events `wanted` (all when None) to one WebSocket listener until either side closes."""
        # A listener that does not answer our close at once is dropped: a server going down must not wait
        # on browsers (Chromium answers a server's close frame only after about two seconds).
        ws = web.WebSocketResponse(heartbeat=20.0, timeout=CLOSE_TIMEOUT_S)
        await ws.prepare(request)
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._queues[queue] = None if wanted is None or wanted.everything else wanted
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
            self._queues.pop(queue, None)
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
