"""OSC datagrams taken apart before python-osc sees them: bounded in size, depth and count.

python-osc's bundle parser trusts each element's size: a size of -4 sends its index back to where
it started, so one 48-byte datagram loops forever on the event loop; nested bundles recurse without
limit (`RecursionError` at ~600 deep); a type tag it does not know is logged once per message and
skipped. `split_datagram` walks the framing itself, checking every size against what is left, and
hands back only single messages whose address and type tags are well formed, for python-osc's
`OscMessage` to read the arguments of. Each argument must be there whole: python-osc pads a float
cut short with zero bytes, so `/stylize/strength` with two of its four bytes was applied as 0.0.
Its work is linear in the datagram's size (at most `MAX_DATAGRAM_BYTES`), with at most `MAX_DEPTH`
bundles nested and `MAX_MESSAGES` messages.
"""

from __future__ import annotations

import struct
from typing import Literal

BUNDLE = b"#bundle\x00"
BUNDLE_HEADER = len(BUNDLE) + 8  # the prefix and the time tag
# A controller's bundle of a few dozen messages fits in 2 KiB; UDP itself allows 64 KiB.
MAX_DATAGRAM_BYTES = 16384
MAX_DEPTH = 8
MAX_MESSAGES = 64
# The argument types python-osc reads (OSC 1.0 plus int64, double, nil, true/false, arrays).
TYPE_TAGS = frozenset("ihfdsbrmtTFN[]")
# Bytes each fixed-size argument takes; strings and blobs are measured, the rest take none.
FIXED_SIZES = {"i": 4, "f": 4, "r": 4, "m": 4, "h": 8, "d": 8, "t": 8}

FramingReason = Literal["size", "depth", "count", "malformed"]


class DatagramRejected(Exception):
    """The datagram cannot be taken apart safely; `reason` is the counter label, the text says why."""

    def __init__(self, reason: FramingReason, message: str) -> None:
        super().__init__(message)
        self.reason: FramingReason = reason


def split_datagram(data: bytes) -> list[bytes]:
    """The messages of a datagram (one message, or a bundle of messages and bundles), in order.

    Raises `DatagramRejected` for anything oversized, too deep, with too many messages, or framed
    wrongly; never anything else.
    """
    if len(data) > MAX_DATAGRAM_BYTES:
        raise DatagramRejected("size", f"{len(data)} bytes, over the limit of {MAX_DATAGRAM_BYTES}")
    messages: list[bytes] = []
    _split(data, 0, messages)
    if not messages:
        raise DatagramRejected("malformed", "the bundle holds no message")
    return messages


def _split(data: bytes, depth: int, messages: list[bytes]) -> None:
    if data.startswith(b"/"):
        _check_message(data)
        if len(messages) >= MAX_MESSAGES:
            raise DatagramRejected("count", f"more than {MAX_MESSAGES} messages in one datagram")
        messages.append(data)
        return
    if not data.startswith(BUNDLE):
        raise DatagramRejected("malformed", f"neither a message nor a bundle: starts {data[:8]!r}")
    if depth >= MAX_DEPTH:
        raise DatagramRejected("depth", f"bundles nested deeper than {MAX_DEPTH}")
    if len(data) < BUNDLE_HEADER:
        raise DatagramRejected("malformed", f"a bundle of {len(data)} bytes is shorter than its header")
    index = BUNDLE_HEADER
    while index < len(data):
        left = len(data) - index - 4
        if left < 0:
            raise DatagramRejected("malformed", f"an element size is cut short at byte {index}")
        (size,) = struct.unpack_from(">i", data, index)
        if size <= 0 or size % 4 or size > left:
            raise DatagramRejected("malformed", f"element size {size} at byte {index} ({left} bytes follow)")
        index += 4
        _split(data[index : index + size], depth + 1, messages)
        index += size


def _check_message(data: bytes) -> None:
    """An address, then (if anything follows) a type tag string of known types, each null-padded to 4 bytes."""
    end = data.find(b"\x00")
    if end < 0:
        raise DatagramRejected("malformed", "the address is not null-terminated")
    tags_start = (end // 4 + 1) * 4
    if tags_start >= len(data):
        return  # no arguments
    if data[tags_start : tags_start + 1] != b",":
        raise DatagramRejected("malformed", "the type tag string does not start with ','")
    tags_end = data.find(b"\x00", tags_start)
    if tags_end < 0:
        raise DatagramRejected("malformed", "the type tag string is not null-terminated")
    tags = data[tags_start + 1 : tags_end].decode("latin-1")
    unknown = set(tags) - TYPE_TAGS
    if unknown:
        raise DatagramRejected("malformed", f"type tags {''.join(sorted(unknown))!r} are not taken")
    _check_arguments(data, tags, (tags_end // 4 + 1) * 4)


def _check_arguments(data: bytes, tags: str, index: int) -> None:
    """Every argument the tags announce is there whole (python-osc would pad one cut short with zeros)."""
    for tag in tags:
        if tag in FIXED_SIZES:
            index += FIXED_SIZES[tag]
        elif tag == "s":
            end = data.find(b"\x00", index)
            if end < 0:
                raise DatagramRejected("malformed", f"a string argument at byte {index} is not null-terminated")
            index = (end // 4 + 1) * 4
        elif tag == "b":
            if index + 4 > len(data):
                raise DatagramRejected("malformed", f"a blob's size at byte {index} is cut short")
            (size,) = struct.unpack_from(">i", data, index)
            if size < 0:
                raise DatagramRejected("malformed", f"blob size {size} at byte {index}")
            index += 4 + (size + 3) // 4 * 4
        if index > len(data):
            raise DatagramRejected("malformed", f"the {tag!r} argument is cut short: {len(data)} bytes of {index}")
