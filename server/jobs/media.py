"""Job media, thread side: probe an upload with av, decode its frames, write the stylized result.

Everything here blocks (files, codecs); the jobs worker calls it through an executor, never on the
event loop. Uploads are recognised by their content, never by their name: the container format av
detects decides the kind. Frames travel as the engine wants them: (H*3/2, W) uint8 yuv420p arrays.
"""

from __future__ import annotations

import fractions
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import av
import av.error
import numpy as np
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.video.stream import VideoStream

from pipeline.contract import FrameParams
from server.jobs.image_header import HEAD_BYTES, image_size
from server.jpeg import JpegEncoder

logger = logging.getLogger(__name__)

Kind = Literal["image", "video"]

# av's demuxer names for the kinds a job takes (MP4 and MOV share one demuxer, as do WebM and Matroska).
IMAGE_FORMATS = {"jpeg_pipe", "png_pipe", "webp_pipe"}
IMAGE_CODECS = {"mjpeg": "jpeg", "png": "png", "webp": "webp"}
VIDEO_FORMATS = {"mov,mp4,m4a,3gp,3g2,mj2": "mp4", "matroska,webm": "webm"}
# Audio codecs an MP4 carries as they are; any other source audio is re-encoded to AAC.
REMUX_AUDIO = {"aac", "mp3"}
# A video that decodes to fewer frames than this share of what its header promised was cut short.
COMPLETE_SHARE = 0.9
# Stylized video is written in segments of this many frames: a render stopped by the server resumes
# from its last whole segment.
SEGMENT_FRAMES = 50


class UnsupportedMedia(Exception):
    """Not an image or a video this server renders (an HTTP 415 at the edge)."""


class MediaRejected(Exception):
    """A supported kind outside the configured limits, or with nothing in it (an HTTP 422)."""


class RenderFailed(Exception):
    """Decoding or encoding failed part way; the message is what the job's owner reads."""


@dataclass(frozen=True)
class MediaLimits:
    max_duration_s: float
    max_resolution: int  # longest side in pixels


@dataclass(frozen=True)
class MediaInfo:
    kind: Kind
    format: str  # "jpeg", "png", "webp", "mp4" or "webm"
    width: int
    height: int
    frames: int
    fps: float | None = None
    duration_s: float | None = None
    audio: str | None = None  # the source audio codec, if any

    @property
    def output_format(self) -> str:
        """What the result is written as: JPEG stays JPEG, other images become PNG, video MP4."""
        if self.kind == "video":
            return "mp4"
        return "jpeg" if self.format == "jpeg" else "png"


@dataclass(frozen=True)
class EncodeOptions:
    video_crf: int = 20
    video_preset: str = "veryfast"


CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "mp4": "video/mp4"}
SUFFIXES = {"jpeg": ".jpg", "png": ".png", "mp4": ".mp4"}


def probe(path: Path, limits: MediaLimits) -> MediaInfo:
    """Say what `path` holds, or raise `UnsupportedMedia` / `MediaRejected` naming why not."""
    if path.stat().st_size == 0:
        raise MediaRejected("the upload is empty")
    with path.open("rb") as f:
        size = image_size(f.read(HEAD_BYTES))
    if size is not None:
        _check_size(*size, limits)  # from the header: a small file may hold a huge picture
    try:
        container = av.open(str(path), "r")
    except (av.error.FFmpegError, UnicodeDecodeError) as e:  # a damaged header's metadata may not decode
        raise UnsupportedMedia(f"not a recognised image or video ({getattr(e, 'strerror', None) or e})") from e
    with container:
        name = container.format.name
        try:
            if name in IMAGE_FORMATS or name == "image2":
                return _probe_image(container, limits)
            if name in VIDEO_FORMATS:
                return _probe_video(container, VIDEO_FORMATS[name], limits)
        except (av.error.FFmpegError, UnicodeDecodeError) as e:
            raise MediaRejected(f"the {name} file cannot be read: {e}") from e
        raise UnsupportedMedia(f"format {name!r} is not taken; send JPEG, PNG, WebP, MP4, WebM or MOV")


def _check_size(width: int, height: int, limits: MediaLimits) -> None:
    if max(width, height) > limits.max_resolution:
        raise MediaRejected(f"{width}x{height} is larger than the limit of {limits.max_resolution} pixels a side")


def _probe_image(container: InputContainer, limits: MediaLimits) -> MediaInfo:
    context = container.streams.video[0].codec_context if container.streams.video else None
    image_format = IMAGE_CODECS.get(context.name if context else "")
    if context is None or image_format is None:
        raise UnsupportedMedia(f"image codec {context and context.name!r} is not taken; send JPEG, PNG or WebP")
    if context.width > 0 and context.height > 0:
        _check_size(context.width, context.height, limits)  # before decoding: a small file may hold a huge picture
    try:
        frame = next(container.decode(video=0))
    except (StopIteration, av.error.FFmpegError) as e:
        raise MediaRejected(f"the {image_format} picture does not decode: {e}") from e
    _check_size(frame.width, frame.height, limits)
    return MediaInfo("image", image_format, frame.width, frame.height, frames=1)


def _probe_video(container: InputContainer, video_format: str, limits: MediaLimits) -> MediaInfo:
    if not container.streams.video:
        raise UnsupportedMedia(f"the {video_format} file has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # a damaged stream description names no codec
        raise MediaRejected(f"the {video_format} video names no codec it can be decoded with")
    if stream.codec_context.width <= 0 or stream.codec_context.height <= 0:
        raise MediaRejected(f"the {video_format} video has no picture size")
    _check_size(stream.codec_context.width, stream.codec_context.height, limits)
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else None
    duration_s = container.duration / av.time_base if container.duration else None
    if stream.duration is not None and stream.time_base is not None:
        duration_s = float(stream.duration * stream.time_base)
    frames = stream.frames
    if frames <= 0 and duration_s is not None and fps is not None:
        frames = round(duration_s * fps)
    if frames <= 0 or duration_s is None:
        # No length in the header (WebM straight from a browser's recorder): count the packets.
        frames, duration_s = _count_packets(container, stream)
    if frames <= 0:
        raise MediaRejected(f"the {video_format} video has no frames")
    if duration_s is not None and duration_s > limits.max_duration_s:
        raise MediaRejected(f"{duration_s:.1f} s is longer than the limit of {limits.max_duration_s:g} s")
    if fps is None:
        fps = frames / duration_s if duration_s else 25.0
    audio_context = container.streams.audio[0].codec_context if container.streams.audio else None
    if container.streams.audio and audio_context is None:
        raise MediaRejected(f"the {video_format} audio names no codec it can be decoded with")
    audio = audio_context.name if audio_context is not None else None
    return MediaInfo(
        "video",
        video_format,
        stream.codec_context.width,
        stream.codec_context.height,
        frames=frames,
        fps=fps,
        duration_s=duration_s,
        audio=audio,
    )


def _count_packets(container: InputContainer, stream: VideoStream) -> tuple[int, float | None]:
    """Frames and duration of a stream whose header does not say (WebM from a browser's recorder)."""
    count = 0
    last: float | None = None
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            count += 1
            if packet.pts is not None and packet.time_base is not None:
                end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                last = end if last is None else max(last, end)
    except av.error.FFmpegError as e:
        raise MediaRejected(f"the video cannot be read through: {e}") from e
    start = float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else 0.0
    return count, None if last is None else last - start


@dataclass
class SourceFrame:
    data: np.ndarray  # (H*3/2, W) uint8 yuv420p, H and W even
    pts: int | None
    time_base: fractions.Fraction | None
    params: FrameParams | None = None  # what this frame is made with, where it differs from the job's (a replay)
    held: bool = False  # a replay's paused frame: the previous stylized frame again, as the show had it


class Render(Protocol):
    """One job's media: frames out of the source, stylized frames into the target."""

    resume_from: int  # frames rendered by an earlier run, which `read` skips

    def read(self) -> SourceFrame | None: ...

    def write(self, source: SourceFrame, stylized: np.ndarray) -> None: ...

    def finish(self) -> None: ...

    def close(self) -> None: ...


def open_render(
    source: Path, target: Path, info: MediaInfo, options: EncodeOptions, jpeg: JpegEncoder, segments: Path
) -> Render:
    """`segments`: where a video's rendered segments are kept between runs (a picture needs none)."""
    if info.kind == "image":
        return ImageRender(source, target, info, jpeg)
    return VideoRender(source, target, info, options, segments)


def _even(value: int) -> int:
    return max(2, value // 2 * 2)


class ImageRender:
    """One picture in, one out, at the input's exact size: JPEG stays JPEG, PNG and WebP become PNG."""

    def __init__(self, source: Path, target: Path, info: MediaInfo, jpeg: JpegEncoder) -> None:
        self._source = source
        self._target = target
        self._info = info
        self._jpeg = jpeg
        self._read = False
        self.resume_from = 0

    def read(self) -> SourceFrame | None:
        if self._read:
            return None
        self._read = True
        try:
            with av.open(str(self._source), "r") as container:
                frame = next(container.decode(video=0))
        except (StopIteration, av.error.FFmpegError) as e:
            raise RenderFailed(f"the picture does not decode: {e}") from e
        frame = frame.reformat(width=_even(frame.width), height=_even(frame.height), format="yuv420p", threads=1)
        return SourceFrame(frame.to_ndarray(threads=1), None, None)

    def write(self, source: SourceFrame, stylized: np.ndarray) -> None:
        picture = av.VideoFrame.from_ndarray(stylized, format="yuv420p")
        rgb = picture.reformat(width=self._info.width, height=self._info.height, format="rgb24", threads=1)
        data = self._jpeg.encode(rgb) if self._info.output_format == "jpeg" else _encode_png(rgb)
        self._target.write_bytes(data)

    def finish(self) -> None:
        if not self._target.is_file():
            raise RenderFailed("the picture was never written")

    def close(self) -> None:
        pass


def _encode_png(frame: av.VideoFrame) -> bytes:
    codec = av.CodecContext.create("png", "w")
    assert isinstance(codec, av.VideoCodecContext)
    codec.width = frame.width
    codec.height = frame.height
    codec.pix_fmt = "rgb24"
    packets = [*codec.encode(frame), *codec.encode(None)]
    return b"".join(bytes(packet) for packet in packets)


class VideoRender:
    """Decodes the source's video frame by frame and writes MP4/H.264 (yuv420p) at the source's
    frame rate and timing, so frame count and duration match; the source audio is copied (AAC,
    MP3) or re-encoded to AAC.

    The stylized frames go into segments of `SEGMENT_FRAMES` frames under `segments/` (each a
    small MP4, renamed into place once whole), so a render the server was stopped in resumes from
    its last whole segment: `resume_from` frames are decoded again but not sent to the engine.
    `finish()` joins the segments (no re-encode; no B-frames, so timestamps simply add up) with
    the source's audio, interleaved by time, into the target.
    """

    def __init__(self, source: Path, target: Path, info: MediaInfo, options: EncodeOptions, segments: Path) -> None:
        self._source = source
        self._info = info
        self._target = target
        self._options = options
        self._segments = segments
        segments.mkdir(parents=True, exist_ok=True)
        for leftover in segments.glob("*.part"):
            leftover.unlink()  # a segment the last run was writing when it stopped
        self._done = sorted(segments.glob("seg-*.mp4"))
        self.resume_from = len(self._done) * SEGMENT_FRAMES
        self._input = av.open(str(source), "r")
        self._segment: _Segment | None = None
        try:
            self._video_in = self._input.streams.video[0]
            self._audio_in: AudioStream | None = self._input.streams.audio[0] if self._input.streams.audio else None
            self._width = _even(info.width)
            self._height = _even(info.height)
            self._rate = self._video_in.average_rate or fractions.Fraction(info.fps or 25.0).limit_denominator(1001)
            self._packets: Iterator[av.Packet] = self._input.demux(self._video_in)
        except BaseException:
            self.close()
            raise
        self._decoded: deque[av.VideoFrame] = deque()
        # Where the last whole segment ends, so timestamps go on rising after a resume.
        self._last_pts: int | None = _first_pts(self._done[-1]) + SEGMENT_FRAMES - 1 if self._done else None
        self.frames_read = 0
        self.frames_written = self.resume_from

    def read(self) -> SourceFrame | None:
        while True:
            frame = self._next_frame()
            if frame is None:
                return None
            if self.frames_read > self.resume_from:  # earlier frames are in the segments already
                pts = frame.pts
                frame = frame.reformat(width=self._width, height=self._height, format="yuv420p", threads=1)
                return SourceFrame(frame.to_ndarray(threads=1), pts, self._video_in.time_base)

    def _next_frame(self) -> av.VideoFrame | None:
        while not self._decoded:
            try:
                packet = next(self._packets, None)
                if packet is None:
                    return None
                self._decoded.extend(self._video_in.decode(packet))
            except av.error.FFmpegError as e:
                raise RenderFailed(f"the video does not decode after frame {self.frames_read}: {e}") from e
        self.frames_read += 1
        return self._decoded.popleft()

    def write(self, source: SourceFrame, stylized: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(stylized, format="yuv420p")
        # Source times snapped to the frame-rate grid: exact for constant-rate sources whatever
        # their container's clock, within half a frame for variable ones, never drifting.
        pts = None
        if source.pts is not None and source.time_base is not None:
            pts = round(source.pts * source.time_base * self._rate)
        if pts is None or (self._last_pts is not None and pts <= self._last_pts):
            pts = 0 if self._last_pts is None else self._last_pts + 1
        self._last_pts = pts
        if self._segment is None:
            index = self.frames_written // SEGMENT_FRAMES
            path = self._segments / f"seg-{index:05d}-{pts}.mp4"
            self._segment = _Segment(path, pts, self._rate, self._width, self._height, self._options)
        try:
            self._segment.write(frame, pts)
        except av.error.FFmpegError as e:
            raise RenderFailed(f"encoding frame {self.frames_written} failed: {e}") from e
        self.frames_written += 1
        if self._segment.frames == SEGMENT_FRAMES:
            self._close_segment()

    def _close_segment(self) -> None:
        segment, self._segment = self._segment, None
        if segment is not None:
            try:
                segment.finish()
            except av.error.FFmpegError as e:
                raise RenderFailed(f"finishing a segment failed: {e}") from e

    def finish(self) -> None:
        """Join the segments and the source audio into the target; a source that ended early fails the job."""
        expected = self._info.frames
        if self.frames_written < expected * COMPLETE_SHARE:
            raise RenderFailed(
                f"the video ends after {self.frames_written} of {expected} frames: the file is truncated or damaged"
            )
        self._close_segment()
        segments = sorted(self._segments.glob("seg-*.mp4"))
        if not segments:
            raise RenderFailed("the video has no frames to write")
        try:
            with av.open(str(self._target), "w", format="mp4", options={"movflags": "+faststart"}) as output:
                with av.open(str(segments[0]), "r") as first:
                    video_out = output.add_stream_from_template(first.streams.video[0])
                audio_out, remux = self._add_audio_stream(output)
                streams = [self._video_packets(segments, video_out)]
                if audio_out is not None:
                    streams.append(self._audio_packets(audio_out, remux))
                for *_, packet in heapq.merge(*streams):
                    output.mux(packet)
        except av.error.FFmpegError as e:
            raise RenderFailed(f"finishing the video failed: {e}") from e

    def _video_packets(self, segments: list[Path], stream: VideoStream) -> Iterator[_Timed]:
        sequence = itertools.count()
        for order, path in enumerate(segments):
            with av.open(str(path), "r") as segment:
                source = segment.streams.video[0]
                assert source.time_base is not None
                offset = round(fractions.Fraction(_first_pts(path)) / self._rate / source.time_base)
                for packet in segment.demux(source):
                    if packet.dts is None or packet.pts is None:
                        continue  # the demuxer's end-of-stream marker
                    packet.pts += offset
                    packet.dts += offset
                    packet.stream = stream
                    yield float(packet.dts * source.time_base), order, next(sequence), packet

    def _audio_packets(self, stream: AudioStream, remux: bool) -> Iterator[_Timed]:
        """The source's audio, copied or re-encoded, read through a container of its own."""
        sequence = itertools.count()
        with av.open(str(self._source), "r") as audio_input:
            source = audio_input.streams.audio[0]
            for packet in audio_input.demux(source):
                if remux:
                    if packet.dts is None:
                        continue  # the demuxer's end-of-stream marker
                    packet.stream = stream
                    out = [packet]
                else:
                    out = [encoded for frame in source.decode(packet) for encoded in stream.encode(frame)]
                for encoded in out:
                    yield _seconds(encoded), -1, next(sequence), encoded
            if not remux:
                for encoded in stream.encode(None):
                    yield _seconds(encoded), -1, next(sequence), encoded

    def _add_audio_stream(self, output: OutputContainer) -> tuple[AudioStream | None, bool]:
        source = self._audio_in
        if source is None:
            return None, False
        if source.codec_context.name in REMUX_AUDIO:
            return output.add_stream_from_template(source), True
        stream = output.add_stream("aac", rate=source.codec_context.sample_rate or 48000)
        stream.layout = source.codec_context.layout
        return stream, False

    def close(self) -> None:
        if self._segment is not None:
            self._segment.abandon()
            self._segment = None
        self._input.close()


class _Segment:
    """SEGMENT_FRAMES stylized frames as one MP4 (written as .part, renamed when whole)."""

    def __init__(
        self, path: Path, first_pts: int, rate: fractions.Fraction, width: int, height: int, options: EncodeOptions
    ) -> None:
        self.path = path
        self.first_pts = first_pts
        self.frames = 0
        self._partial = path.with_name(path.name + ".part")
        self._output = av.open(str(self._partial), "w", format="mp4")
        self._rate = rate
        # No B-frames: each segment's timestamps start at 0 with pts == dts, so joined ones add up.
        codec_options = {"crf": str(options.video_crf), "preset": options.video_preset, "bframes": "0"}
        self._stream = self._output.add_stream("libx264", rate=rate, options=codec_options)
        self._stream.width = width
        self._stream.height = height
        self._stream.pix_fmt = "yuv420p"

    def write(self, frame: av.VideoFrame, pts: int) -> None:
        frame.pts = pts - self.first_pts
        frame.time_base = fractions.Fraction(1) / self._rate
        self._output.mux(self._stream.encode(frame))
        self.frames += 1

    def finish(self) -> None:
        self._output.mux(self._stream.encode(None))
        self._output.close()
        self._partial.replace(self.path)

    def abandon(self) -> None:
        try:
            self._output.close()
        except av.error.FFmpegError:
            pass
        self._partial.unlink(missing_ok=True)


def _first_pts(segment: Path) -> int:
    """seg-<index>-<first pts>.mp4: the pts (in frames of the source's rate) its first frame has in the video."""
    return int(segment.stem.rsplit("-", 1)[1])


def _seconds(packet: av.Packet) -> float:
    if packet.dts is None or packet.time_base is None:
        return 0.0
    return float(packet.dts * packet.time_base)


_Timed = tuple[float, int, int, av.Packet]  # (seconds, order, sequence, packet): heapq.merge never compares packets
