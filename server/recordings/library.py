"""Every recording on disk, and the ones being written: start, stop, list, read, bundle, delete.

File work runs off the loop (`asyncio.to_thread`); ids are checked against `RECORDING_ID` before
any path is made from one, so an id can never name a file outside the recordings folder.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import av

from server.config import RecordingsConfig
from server.control.events import EventHub, RecordingEvent
from server.control.settings import name_scope
from server.recordings.recorder import (
    Meta,
    Recorder,
    Taken,
    join_outputs,
    read_changes,
    read_meta,
    segment_folder,
    write_meta,
)

logger = logging.getLogger(__name__)

RECORDING_ID = re.compile(r"[0-9a-f]{12}")
OUTPUT = "output.mp4"

# A name's frames with their input and settings: (name, listener) -> what ends the listening.
Listen = Callable[[str, Callable[[Taken], None]], Callable[[], None]]


class RecordingNotFound(LookupError):
    pass


class AlreadyRecording(RuntimeError):
    def __init__(self, name: str, recording_id: str) -> None:
        super().__init__(f"name {name!r} is already being recorded ({recording_id})")
        self.recording_id = recording_id


class RecordingsFull(OSError):
    pass


class NothingRecorded(RuntimeError):
    pass


class RecordingLibrary:
    def __init__(self, folder: Path, config: RecordingsConfig, events: EventHub) -> None:
        self.folder = folder
        self.config = config
        self._events = events
        self._active: dict[str, tuple[Recorder, Callable[[], None]]] = {}  # id -> (writer, end listening)
        self._watchers: set[asyncio.Task[None]] = set()

    # -- start-up -------------------------------------------------------------------------------

    def recover(self) -> None:
        """Blocking, at start-up: a recording left `waiting`/`recording` was cut short by a crash. Its
        closed segments are checked (a segment whose video holds fewer frames than it lists is
        damaged, left out of `frames` and of the output); one past them (a crash mid-segment) is
        damaged too, its readable frames counted apart."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for folder in sorted(self.folder.iterdir()):
            if not RECORDING_ID.fullmatch(folder.name) or not folder.is_dir():
                continue
            try:
                meta = read_meta(folder)
            except (OSError, ValueError, TypeError):
                logger.warning("recording without a readable recording.json skipped: %s", folder)
                continue
            if meta.state not in ("waiting", "recording"):
                continue
            meta.damaged_segments, meta.frames = [], 0
            for index in range(meta.segments):
                listed, stored = segment_frames(segment_folder(folder, index))
                if stored == listed:
                    meta.frames += listed
                else:
                    meta.damaged_segments.append(index)
            cut = segment_folder(folder, meta.segments)
            # The cut segment's MP4 has no index yet; its Matroska input reads up to the cut.
            meta.damaged_frames = readable_frames(cut / "input.mkv") if cut.is_dir() else 0
            meta.state = "damaged" if cut.is_dir() or meta.damaged_segments else "stopped"
            meta.stop_reason = "the server stopped while recording"
            write_meta(folder, meta)
            logger.warning("recording %s was cut short: %d frames kept", meta.id, meta.frames)

    # -- recording ------------------------------------------------------------------------------

    def recording_of(self, name: str) -> str | None:
        return next((rid for rid, (r, _) in self._active.items() if r.meta.name == name), None)

    async def start(self, name: str, listen: Listen) -> Meta:
        running = self.recording_of(name)
        if running is not None:
            raise AlreadyRecording(name, running)
        if await asyncio.to_thread(self.bytes_used) >= self.config.max_gb * 1024**3:
            raise RecordingsFull(f"recordings take {self.config.max_gb} GB already (max_gb)")
        recording_id = uuid.uuid4().hex[:12]
        folder = self.folder / recording_id
        meta = Meta(id=recording_id, name=name, started_at=time.time())
        await asyncio.to_thread(folder.mkdir, parents=True)
        recorder = await asyncio.to_thread(Recorder, folder, meta, self.config, self.bytes_used)
        recorder.start()
        self._active[recording_id] = (recorder, listen(name, recorder.offer))
        # A writer that ends by itself (a full disk) stops listening too.
        watcher = asyncio.create_task(self._ended(recording_id, recorder), name=f"recording-{recording_id}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        self._publish("started", meta)
        return meta

    async def switch(self, name: str, on: bool, listen: Listen) -> None:
        """Start (`on`) or stop recording `name`; nothing when it already is (or is not) recorded."""
        running = self.recording_of(name)
        if on and running is None:
            await self.start(name, listen)
        elif not on and running is not None:
            await self.stop(running)

    async def _ended(self, recording_id: str, recorder: Recorder) -> None:
        await asyncio.to_thread(recorder.done.wait)
        active = self._active.pop(recording_id, None)
        if active is not None:
            active[1]()
            await asyncio.to_thread(recorder.stop)
            self._publish("stopped", recorder.meta)

    async def stop(self, recording_id: str) -> Meta:
        active = self._active.pop(recording_id, None)
        if active is None:
            raise RecordingNotFound(recording_id)
        recorder, end = active
        end()
        await asyncio.to_thread(recorder.stop)
        self._publish("stopped", recorder.meta)
        return recorder.meta

    async def close(self) -> None:
        for recording_id in list(self._active):
            await self.stop(recording_id)
        for watcher in list(self._watchers):
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)

    # -- reading --------------------------------------------------------------------------------

    def bytes_used(self) -> int:
        """Blocking: every file under the recordings folder."""
        return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())

    def _folder(self, recording_id: str) -> Path:
        folder = self.folder / recording_id
        if not RECORDING_ID.fullmatch(recording_id) or not (folder / "recording.json").is_file():
            raise RecordingNotFound(recording_id)
        return folder

    def folder_of(self, recording_id: str) -> Path | None:
        """Blocking: where a recording's files are, None for an unknown one."""
        try:
            return self._folder(recording_id)
        except RecordingNotFound:
            return None

    def describe(self, recording_id: str, *, changes: bool = True) -> dict[str, Any]:
        """Blocking: the recording's state, its size on disk and (unless not asked for) its changes."""
        folder = self._folder(recording_id)
        active = self._active.get(recording_id)
        meta = active[0].meta if active is not None else read_meta(folder)
        listed = read_changes(folder) if changes else None
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        return {**meta.to_json(), "bytes": size, "changes": listed}

    def all(self) -> list[dict[str, Any]]:
        """Blocking: every recording, newest first, without its changes."""
        found = []
        for folder in self.folder.iterdir() if self.folder.is_dir() else []:
            if RECORDING_ID.fullmatch(folder.name) and (folder / "recording.json").is_file():
                found.append(self.describe(folder.name, changes=False))
        return sorted(found, key=lambda r: -r["started_at"])

    def output(self, recording_id: str) -> Path:
        """Blocking: the closed segments' stylized frames as one MP4 (packets copied, not re-encoded)."""
        folder = self._folder(recording_id)
        meta = read_meta(folder)
        readable = meta.readable_segments()
        if not readable:
            raise NothingRecorded(f"recording {recording_id} has no readable closed segment (state {meta.state})")
        join_outputs([segment_folder(folder, index) / "output.mp4" for index in readable], folder / OUTPUT)
        return folder / OUTPUT

    def bundle(self, recording_id: str) -> Path:
        """Blocking: the whole recording (segments, changes, state) as one tar archive."""
        folder = self._folder(recording_id)
        archive = folder.parent / f".{recording_id}.tar"
        with tarfile.open(archive, "w") as tar:
            for path in sorted(folder.rglob("*")):
                if path.is_file() and not path.name.endswith(".tmp") and path.name != OUTPUT:
                    tar.add(path, arcname=f"{recording_id}/{path.relative_to(folder)}")
        return archive

    async def delete(self, recording_id: str) -> None:
        if recording_id in self._active:
            await self.stop(recording_id)
        folder = await asyncio.to_thread(self._folder, recording_id)
        meta = await asyncio.to_thread(read_meta, folder)
        await asyncio.to_thread(shutil.rmtree, folder)
        self._publish("deleted", meta)

    def _publish(self, action: Literal["started", "stopped", "deleted"], meta: Meta) -> None:
        recording = {"id": meta.id, "name": meta.name, "state": meta.state, "stop_reason": meta.stop_reason}
        self._events.publish(RecordingEvent(action=action, scope=name_scope(meta.name), recording=recording))


def segment_frames(folder: Path) -> tuple[int, int]:
    """Blocking: the frames a closed segment lists, and those its output video holds (packets, not decoded)."""
    try:
        listed = len((folder / "frames.jsonl").read_text().splitlines())
    except OSError:
        return 0, -1
    try:
        with av.open(str(folder / "output.mp4")) as container:
            stored = sum(1 for packet in container.demux(video=0) if packet.size)
    except (av.FFmpegError, OSError):
        stored = -1
    return listed, stored


def readable_frames(path: Path) -> int:
    """Blocking: how many frames of a (maybe cut short) video decode."""
    count = 0
    try:
        with av.open(str(path)) as container:
            for _ in container.decode(video=0):
                count += 1
    except (av.FFmpegError, OSError):
        pass
    return count
