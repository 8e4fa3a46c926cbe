"""The video sender's bitrates: the one place that sets aiortc's encoder constants.

aiortc keeps the start, floor and ceiling bitrate of its VP8 and H.264 encoders as module constants
(`DEFAULT_BITRATE`, `MIN_BITRATE`, `MAX_BITRATE` in `aiortc.codecs.vpx` and `aiortc.codecs.h264`) and
offers no per-sender setting; an encoder reads them when it is made and whenever congestion control
(REMB from the browser) moves its target. Its 500 kbps VP8 start is too low for 512² pictures, so the
server sets them once at start-up with `apply()` and puts the old values back with `restore()`.
They are process-wide: every app in one process shares the last values applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from aiortc.codecs import h264, vpx

from server.config import TransportConfig

_ENCODER_MODULES: tuple[ModuleType, ...] = (vpx, h264)


@dataclass(frozen=True)
class Bitrates:
    """Bits per second: where an encoder starts, and the range congestion control keeps it in."""

    target: int
    minimum: int
    maximum: int

    @classmethod
    def from_config(cls, config: TransportConfig) -> Bitrates:
        return cls(
            target=config.bitrate_kbps * 1000,
            minimum=config.min_bitrate_kbps * 1000,
            maximum=config.max_bitrate_kbps * 1000,
        )


def current() -> dict[str, Bitrates]:
    """The values each encoder module holds now, by module name."""
    return {
        module.__name__: Bitrates(module.DEFAULT_BITRATE, module.MIN_BITRATE, module.MAX_BITRATE)
        for module in _ENCODER_MODULES
    }


def apply(bitrates: Bitrates) -> dict[str, Bitrates]:
    """Set `bitrates` on every encoder module; returns what they held before, for `restore()`."""
    previous = current()
    for module in _ENCODER_MODULES:
        _set(module, bitrates)
    return previous


def restore(previous: dict[str, Bitrates]) -> None:
    for module in _ENCODER_MODULES:
        _set(module, previous[module.__name__])


def _set(module: ModuleType, bitrates: Bitrates) -> None:
    values = {"DEFAULT_BITRATE": bitrates.target, "MIN_BITRATE": bitrates.minimum, "MAX_BITRATE": bitrates.maximum}
    for name, value in values.items():
        setattr(module, name, value)
