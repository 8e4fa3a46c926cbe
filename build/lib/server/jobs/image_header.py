"""A picture's size from its header bytes alone: PNG, JPEG and WebP, read before anything decodes it.

av's PNG demuxer reports no size until a frame is decoded, so a 747 kB PNG of 16000x16000 pixels
was refused only after a 3 s, 730 MB decode. These few lines of each format's header say the size
first; a picture over the limit is refused without a single pixel decoded.
"""

from __future__ import annotations

import struct

# How much of a file `image_size` wants: JPEG's size follows its EXIF and ICC segments.
HEAD_BYTES = 256 * 1024

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless ...): not DHT (C4), JPG (C8) or DAC (CC).
JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def image_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from the first bytes of a PNG, JPEG or WebP file; None when they do not say."""
    if head.startswith(PNG_SIGNATURE):
        return _png(head)
    if head.startswith(b"\xff\xd8"):
        return _jpeg(head)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp(head)
    return None


def _png(head: bytes) -> tuple[int, int] | None:
    # The first chunk is IHDR: length, "IHDR", width, height (big-endian).
    if len(head) < 24 or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", head, 16)
    return width, height


def _jpeg(head: bytes) -> tuple[int, int] | None:
    index = 2
    while index + 4 <= len(head):
        if head[index] != 0xFF:
            return None
        marker = head[index + 1]
        if marker == 0xFF:  # fill byte
            index += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            index += 2
            continue
        (length,) = struct.unpack_from(">H", head, index + 2)
        if marker in JPEG_SOF:
            if index + 9 > len(head):
                return None
            height, width = struct.unpack_from(">HH", head, index + 5)
            return width, height
        if length < 2 or marker == 0xDA:  # start of scan: no frame header before it
            return None
        index += 2 + length
    return None


def _webp(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return width, height
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", head, 26)
        return width & 0x3FFF, height & 0x3FFF
    return None
