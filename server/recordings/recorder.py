"""One recording being written: a writer thread turns a name's frames into closed segments on disk.

The loop only hands each take (camera frame, stylized frame, settings) to a bounded queue, so a
recording never slows the live path nor uses engine time; a full queue drops the take (counted).

On disk, `<dir>/<id>/`:
- `recording.json`: name, state, frames, and `segments`, the count of closed segments (rewritten
  atomically after each one closes: a segment past that count is the one a crash cut short);
- `changes.jsonl`: every settings change that applied to the name, with the pts of the first frame
  that obeyed it (a line per change, flushed when written, fsynced when a segment closes);
- `seg-NNNNN/input.mkv`: the camera frames as the engine saw them (yuv420p), in FFV1, lossless, so a
  replay feeds the engine the very same planes; `output.mp4`: the stylized frames in H.264 (no
  B-frames: pts and dts agree, so segments concatenate by copying packets); `frames.jsonl`: each
  frame's pts (1/90000 s from the recording's start) and whether it was a paused frame.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import av
from av import VideoFrame
from pydantic import BaseModel

from server.config import RecordingsConfig
from server.http.errors import disk_full

logger = logging.getLogger(__name__)

TIME_BASE = Fraction(1, 90000)
# A new stream of the name starts its pts again: its first frame goes this long after the last one.
RESTART_GAP = 3000
META = "recording.json"
CHANGES = "changes.jsonl"


@dataclass(frozen=True, slots=True)
class Taken:
    """What the loop hands the writer: references only (the frames are never written again)."""

    input: VideoFrame
    output: VideoFrame
    settings: BaseModel  # dumped on the writer thread, not the loop
    paused: bool


@dataclass
class Meta:
    id: str
    name: str
    started_at: float
    state: str = "waiting"  # waiting (for the name's stream), recording, stopped, damaged
    stop_reason: str | None = None
    ended_at: float | None = None
    frames: int = 0  # in closed segments
    segments: int = 0  # closed ones
    duration_s: float = 0.0
    changes: int = 0
    dropped: int = 0  # takes the writer could not keep up with
    damaged_frames: int = 0  # frames readable in the segment a crash cut short (not in `frames`)
    damaged_segments: list[int] = field(default_factory=list)  # closed ones found unreadable at start-up

    def readable_segments(self) -> list[int]:
        return [index for index in range(self.segments) if index not in self.damaged_segments]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def write_meta(folder: Path, meta: Meta) -> None:
    """Atomically: a crash leaves the old file or the new one."""
    temporary = folder / f"{META}.tmp"
    with temporary.open("w") as f:
        json.dump(meta.to_json(), f)
        f.flush()
        os.fsync(f.fileno())
    temporary.replace(folder / META)


def read_meta(folder: Path) -> Meta:
    return Meta(**json.loads((folder / META).read_text()))


def read_changes(folder: Path) -> list[dict[str, Any]]:
    """Blocking: the recorded changes, oldest first; a line a crash cut short is left out."""
    path = folder / CHANGES
    changes = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            changes.append(json.loads(line))
        except ValueError:
            break  # only ever the last line: lines are written whole, in order
    return changes


def segment_folder(folder: Path, index: int) -> Path:
    return folder / f"seg-{index:05d}"


def open_output(path: Path, width: int, height: int, crf: int) -> tuple[av.container.OutputContainer, Any]:
    """A segment's stylized video. A replay writes its frames with this too: the same encoder on the
    same frames gives the same stream, so a replay's frames can be compared with the show's exactly."""
    container = av.open(str(path), "w", format="mp4")
    stream = container.add_stream("libx264", rate=30)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.time_base = TIME_BASE
    stream.codec_context.time_base = TIME_BASE
    # zerolatency: no B-frames (pts = dts, so segments join by copying packets), no lookahead.
    stream.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency"}
    return container, stream


def encode_output(container: av.container.OutputContainer, stream: Any, planes: Any, pts: int) -> None:
    """One stylized frame (yuv420p planes) at `pts` (1/90000 s)."""
    frame = VideoFrame.from_ndarray(planes, format="yuv420p")
    frame.pts, frame.time_base = pts, TIME_BASE
    for packet in stream.encode(frame):
        container.mux(packet)


def close_output(container: av.container.OutputContainer, stream: Any) -> None:
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()


def join_outputs(segments: list[Path], target: Path) -> None:
    """Segments' MP4s as one, packets copied (no B-frames: every segment's timestamps carry on)."""
    temporary = target.with_name(target.name + ".tmp")
    with av.open(str(temporary), "w", format="mp4") as out:
        stream = None
        for path in segments:
            with av.open(str(path)) as segment:
                source = segment.streams.video[0]
                if stream is None:
                    stream = out.add_stream_from_template(source)
                for packet in segment.demux(source):
                    if packet.dts is None:  # the demuxer's end-of-stream marker
                        continue
                    packet.stream = stream
                    out.mux(packet)
    temporary.replace(target)


@dataclass
class _Segment:
    folder: Path
    width: int
    height: int
    first_pts: int
    input: av.container.OutputContainer
    output: av.container.OutputContainer
    input_stream: Any
    output_stream: Any
    frames_file: IO[str]
    frames: int = 0
    last_pts: int = 0

    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir())


@dataclass
class _Timeline:
    """Source pts -> the recording's pts, kept increasing across streams of the name."""

    offset: int | None = None
    last: int = -1

    def place(self, frame: VideoFrame) -> int:
        source = int((frame.pts or 0) * (frame.time_base or TIME_BASE) / TIME_BASE)
        if self.offset is None:
            self.offset = -source
        pts = source + self.offset
        if pts <= self.last:  # a new stream of the name, or a repeated pts
            self.offset += self.last + RESTART_GAP - pts
            pts = self.last + RESTART_GAP
        self.last = pts
        return pts


@dataclass
class Recorder:
    folder: Path
    meta: Meta
    config: RecordingsConfig
    bytes_used: Any  # () -> int: every recording's bytes on disk but this one's open segment
    _queue: queue.Queue[Taken | None] = field(init=False)
    _thread: threading.Thread = field(init=False)
    _segment: _Segment | None = field(default=None, init=False)
    _timeline: _Timeline = field(default_factory=_Timeline, init=False)
    _settings: dict[str, Any] | None = field(default=None, init=False)
    _changes: IO[str] | None = field(default=None, init=False)
    _stopped_by: str | None = field(default=None, init=False)
    _bytes_before: int = field(default=0, init=False)  # every recording's bytes when the open segment began

    def __post_init__(self) -> None:
        self._queue = queue.Queue(maxsize=self.config.queue_frames)
        self._thread = threading.Thread(target=self._run, name=f"record-{self.meta.id}", daemon=True)
        self.done = threading.Event()  # the writer ended (stopped, or the disk filled)
        write_meta(self.folder, self.meta)

    def start(self) -> None:
        self._thread.start()

    def offer(self, taken: Taken) -> None:
        """On the loop: never waits; a writer that cannot keep up loses the take (counted)."""
        if self.done.is_set():
            return
        try:
            self._queue.put_nowait(taken)
        except queue.Full:
            self.meta.dropped += 1

    def stop(self) -> None:
        """Blocking (call off the loop): the writer closes its segment and ends."""
        while self._thread.is_alive():  # a writer that ended by itself (a full disk) takes nothing more
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join()

    # -- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._changes = (self.folder / CHANGES).open("a")
            while True:
                taken = self._queue.get()
                if taken is None:
                    break
                self._write(taken)
                if self._stopped_by is not None:
                    break
            self._close_segment()
        except Exception as e:
            if disk_full(e):
                self._stopped_by = "the disk is full"
            else:
                logger.exception("recording failed id=%s", self.meta.id)
                self._stopped_by = f"writing failed ({type(e).__name__}: {e})"
            self._abandon_segment()
        finally:
            if self._changes is not None:
                self._changes.close()
            self.meta.state, self.meta.stop_reason = "stopped", self._stopped_by
            self.meta.ended_at = time.time()
            try:
                write_meta(self.folder, self.meta)
            except OSError:
                logger.exception("recording's last state not written id=%s", self.meta.id)
            self.done.set()
            if self._stopped_by is not None:
                logger.warning("recording stopped id=%s: %s", self.meta.id, self._stopped_by)

    def _write(self, taken: Taken) -> None:
        pts = self._timeline.place(taken.input)
        planes = taken.input.to_ndarray(format="yuv420p", threads=1)
        height, width = planes.shape[0] * 2 // 3, planes.shape[1]
        segment = self._segment
        if segment is not None and (
            (segment.width, segment.height) != (width, height)
            or (pts - segment.first_pts) * TIME_BASE >= self.config.segment_s
        ):
            self._close_segment()
            segment = None
        if segment is None:
            self._bytes_before = self.bytes_used()  # walked once a segment; the open one's files are stat'ed
            segment = self._segment = self._open_segment(width, height, pts)
        settings = taken.settings.model_dump(mode="json")
        if settings != self._settings:
            self._settings = settings
            assert self._changes is not None
            self._changes.write(json.dumps({"pts": pts, "settings": settings}) + "\n")
            self._changes.flush()
            self.meta.changes += 1
        source = VideoFrame.from_ndarray(planes, format="yuv420p")
        source.pts, source.time_base = pts - segment.first_pts, TIME_BASE
        for packet in segment.input_stream.encode(source):
            segment.input.mux(packet)
        encode_output(segment.output, segment.output_stream, taken.output.to_ndarray(format="yuv420p", threads=1), pts)
        segment.frames_file.write(json.dumps({"pts": pts, "paused": taken.paused}) + "\n")
        segment.frames += 1
        segment.last_pts = pts
        if self.meta.state == "waiting":
            self.meta.state = "recording"
            write_meta(self.folder, self.meta)
        if self._bytes_before + segment.bytes() >= self.config.max_gb * 1024**3:
            self._stopped_by = f"the recordings' disk share is full (max_gb {self.config.max_gb})"

    def _open_segment(self, width: int, height: int, pts: int) -> _Segment:
        folder = segment_folder(self.folder, self.meta.segments)
        folder.mkdir()
        source = av.open(str(folder / "input.mkv"), "w")
        input_stream = source.add_stream("ffv1", rate=90000)
        input_stream.width, input_stream.height, input_stream.pix_fmt = width, height, "yuv420p"
        input_stream.time_base = TIME_BASE
        stylized, output_stream = open_output(folder / "output.mp4", width, height, self.config.video_crf)
        return _Segment(
            folder,
            width,
            height,
            pts,
            source,
            stylized,
            input_stream,
            output_stream,
            (folder / "frames.jsonl").open("w"),
        )

    def _close_segment(self) -> None:
        segment, self._segment = self._segment, None
        if segment is None:
            return
        close_output(segment.input, segment.input_stream)
        close_output(segment.output, segment.output_stream)
        segment.frames_file.flush()
        os.fsync(segment.frames_file.fileno())
        segment.frames_file.close()
        if self._changes is not None:
            os.fsync(self._changes.fileno())
        self.meta.frames += segment.frames
        self.meta.segments += 1
        # to the end of the last frame, taken as 1/30 s long
        self.meta.duration_s = float((segment.last_pts + RESTART_GAP) * TIME_BASE)
        write_meta(self.folder, self.meta)

    def _abandon_segment(self) -> None:
        """After a failure: close what can be closed; the segment is not counted (a reader skips it)."""
        segment, self._segment = self._segment, None
        if segment is None:
            return
        for closing in (segment.input.close, segment.output.close, segment.frames_file.close):
            try:
                closing()
            except Exception:  # the disk that failed the write may fail the close too
                logger.debug("closing a failed segment", exc_info=True)
