"""Test media made with av: short clips with a moving picture and a tone, and still pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import av
import numpy as np

SAMPLE_RATE = 48000


def picture(index: int, width: int, height: int) -> np.ndarray:
    """RGB frame `index`: a gradient with a bar that moves one step a frame."""
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    image[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    image[..., 2] = (index * 9) % 256
    bar = (index * 4) % width
    image[:, bar : bar + 4] = 255
    return image


def make_clip(
    path: Path,
    *,
    seconds: float = 2.0,
    fps: int = 15,
    width: int = 128,
    height: int = 96,
    audio: bool = True,
    container: Literal["mp4", "webm"] = "mp4",
    faststart: bool = False,
) -> Path:
    """MP4 (H.264 + AAC) or WebM (VP8 + Opus) of `seconds` at `fps`, with a 440 Hz tone."""
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format=container, options=options) as output:
        video = output.add_stream("libx264" if container == "mp4" else "libvpx", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = output.add_stream("aac" if container == "mp4" else "libopus", rate=SAMPLE_RATE) if audio else None
        frames = round(seconds * fps)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(picture(index, width, height), format="rgb24")
            frame.pts = index
            output.mux(video.encode(frame))
        output.mux(video.encode(None))
        if sound is not None:
            total = round(seconds * SAMPLE_RATE)
            for start in range(0, total, 960):
                t = np.arange(start, min(start + 960, total)) / SAMPLE_RATE
                tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
                chunk = av.AudioFrame.from_ndarray(tone[None, :], format="fltp", layout="mono")
                chunk.sample_rate = SAMPLE_RATE
                chunk.pts = start
                output.mux(sound.encode(chunk))
            output.mux(sound.encode(None))
    return path


def make_image(kind: Literal["png", "jpeg", "webp"], width: int = 131, height: int = 97) -> bytes:
    """One picture encoded as PNG, JPEG or WebP (odd sizes on purpose: the engine wants even ones)."""
    codec_name, pix_fmt = {"png": ("png", "rgb24"), "jpeg": ("mjpeg", "yuvj420p"), "webp": ("libwebp", "yuv420p")}[kind]
    codec = av.CodecContext.create(codec_name, "w")
    assert isinstance(codec, av.VideoCodecContext)
    codec.width, codec.height, codec.pix_fmt = width, height, pix_fmt
    frame = av.VideoFrame.from_ndarray(picture(3, width, height), format="rgb24").reformat(format=pix_fmt, threads=1)
    return b"".join(bytes(packet) for packet in [*codec.encode(frame), *codec.encode(None)])
