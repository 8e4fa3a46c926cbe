"""A recording rendered again as a job: its camera frames through the engine, its changes at their pts.

The job's input is a copy of the recording (its closed segments and changes), taken when the job is
made, so deleting the recording does not break the job. `ReplayRender` is a jobs `Render`: it reads
each recorded camera frame with the settings in force at its pts (the recorded timeline, then the
plan's overrides from their pts), and writes the stylized frames segment by segment with the
recorder's own encoder, so a replay of the show is the show's output, frame for frame.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

from server.control.settings import StyleSettings
from server.jobs.media import MediaInfo, RenderFailed, SourceFrame
from server.recordings.recorder import (
    CHANGES,
    TIME_BASE,
    close_output,
    encode_output,
    join_outputs,
    open_output,
    read_changes,
    read_meta,
    segment_folder,
    write_meta,
)

PLAN = "plan.json"


@dataclass(frozen=True)
class Plan:
    """What a render changes from the show: nothing (a replay), or a re-master's overrides."""

    mode: str = "replay"
    width: int | None = None  # the frames' size for the engine; None: as recorded
    height: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # set over the recorded settings ...
    from_pts: int = 0  # ... from the frame at this pts (1/90000 s from the recording's start) on
    crf: int = 20


def copy_recording(recording: Path, into: Path, plan: Plan) -> MediaInfo:
    """Blocking: the recording's closed segments, its changes and the plan into the job's input folder."""
    meta = read_meta(recording)
    readable = meta.readable_segments()
    if not readable:
        raise RenderFailed("the recording has no readable closed segment yet")
    into.mkdir(parents=True)
    for copied, index in enumerate(readable):  # renumbered: the copy holds the readable ones alone
        shutil.copytree(segment_folder(recording, index), segment_folder(into, copied))
    shutil.copy2(recording / CHANGES, into / CHANGES)
    meta.segments, meta.damaged_segments = len(readable), []
    write_meta(into, meta)
    (into / PLAN).write_text(json.dumps(plan.__dict__))
    with av.open(str(segment_folder(into, 0) / "input.mkv")) as first:
        stream = first.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
    return MediaInfo(
        kind="video",
        format="recording",
        width=plan.width or width,
        height=plan.height or height,
        frames=meta.frames,
        fps=meta.frames / meta.duration_s if meta.duration_s else None,
        duration_s=meta.duration_s,
    )


class ReplayRender:
    def __init__(self, source: Path, target: Path, segments: Path) -> None:
        self._source = source
        self._target = target
        self._segments_dir = segments
        self._plan = Plan(**json.loads((source / PLAN).read_text()))
        self._meta = read_meta(source)
        self._changes = read_changes(source)
        self._frames = self._read_frames()
        self._writing: tuple[int, Any, Any] | None = None  # (segment, container, stream)
        self._written: list[Path] = []
        self.resume_from = 0  # a replay starts over (its input is short; its segments are cut like the show's)

    def _read_frames(self) -> Generator[tuple[int, SourceFrame]]:
        for index in range(self._meta.segments):
            folder = segment_folder(self._source, index)
            lines = [json.loads(line) for line in (folder / "frames.jsonl").read_text().splitlines()]
            with av.open(str(folder / "input.mkv")) as container:
                for line, frame in zip(lines, container.decode(video=0), strict=False):
                    if self._plan.width and self._plan.height:
                        frame = frame.reformat(width=self._plan.width, height=self._plan.height, threads=1)
                    data = frame.to_ndarray(format="yuv420p", threads=1)
                    pts = int(line["pts"])
                    held = bool(line["paused"])
                    yield (
                        index,
                        SourceFrame(data, pts, TIME_BASE, params=self._settings_at(pts).frame_params(), held=held),
                    )

    def _settings_at(self, pts: int) -> StyleSettings:
        recorded: dict[str, Any] = {}
        for change in self._changes:
            if change["pts"] > pts:
                break
            recorded = change["settings"]
        if pts >= self._plan.from_pts:
            recorded = {**recorded, **self._plan.settings}
        return StyleSettings(**recorded)

    def read(self) -> SourceFrame | None:
        try:
            index, frame = next(self._frames)
        except StopIteration:
            return None
        except av.FFmpegError as e:
            raise RenderFailed(f"the recording does not decode: {e}") from e
        self._segment = index
        return frame

    def write(self, source: SourceFrame, stylized: np.ndarray) -> None:
        if self._writing is None or self._writing[0] != self._segment:
            self._close_writing()
            height, width = stylized.shape[0] * 2 // 3, stylized.shape[1]
            path = self._segments_dir / f"seg-{self._segment:05d}.mp4"
            self._segments_dir.mkdir(parents=True, exist_ok=True)
            container, stream = open_output(path, width, height, self._plan.crf)
            self._writing = (self._segment, container, stream)
            self._written.append(path)
        assert source.pts is not None
        encode_output(self._writing[1], self._writing[2], stylized, source.pts)

    def _close_writing(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            close_output(writing[1], writing[2])

    def finish(self) -> None:
        self._close_writing()
        if not self._written:
            raise RenderFailed("the recording holds no frame")
        join_outputs(self._written, self._target)

    def close(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            writing[1].close()
        self._frames.close()
