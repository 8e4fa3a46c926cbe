"""An MJPEG client: the JPEG parts of a multipart/x-mixed-replace response, one at a time."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
from turbojpeg import TJPF_RGB, TurboJPEG

from server.live.mjpeg import BOUNDARY

DELIMITER = f"--{BOUNDARY}\r\n".encode()


def decode_jpeg(jpeg: bytes) -> np.ndarray:
    """RGB pixels of one whole JPEG."""
    assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9", "not a whole JPEG"
    rgb: np.ndarray = TurboJPEG().decode(jpeg, pixel_format=TJPF_RGB)
    return rgb


class MjpegReader:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self._buffer = b""

    async def parts(self, count: int, timeout: float = 20.0) -> list[bytes]:
        return [await self.next_part(timeout) for _ in range(count)]

    async def next_part(self, timeout: float = 20.0) -> bytes:
        """The next JPEG; `timeout` bounds each read from the socket, not the whole wait."""
        while True:
            start = self._buffer.find(DELIMITER)
            header_end = self._buffer.find(b"\r\n\r\n", start)
            if start >= 0 and header_end >= 0:
                lines = self._buffer[start + len(DELIMITER) : header_end].decode().split("\r\n")
                headers = dict(line.split(": ", 1) for line in lines)
                assert headers["Content-Type"] == "image/jpeg"
                length = int(headers["Content-Length"])
                body_start = header_end + 4
                if len(self._buffer) >= body_start + length + 2:
                    part = self._buffer[body_start : body_start + length]
                    assert self._buffer[body_start + length : body_start + length + 2] == b"\r\n"
                    self._buffer = self._buffer[body_start + length + 2 :]
                    return part
            chunk = await asyncio.wait_for(self.response.content.readany(), timeout)
            assert chunk, "the MJPEG stream ended"
            self._buffer += chunk
