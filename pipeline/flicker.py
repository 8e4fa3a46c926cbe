"""The flicker figure: how much a stream's output changes from one model frame to the next, relative
to how much its input changed.

On the device, per row of a batch, from what the engine already holds (the model-resolution input
and output images): each is reduced to a 32x32 luma thumbnail in [0, 1] (an area average: camera
noise averages away, one pooling kernel), and compared with the stream's previous thumbnails, kept
in a slot of fixed device tensors: `d_in` and `d_out`, mean absolute differences. The rows' pairs
come back with the batch's one copy (no extra sync). On the host, per stream:

    flicker = EMA(d_out) / max(EMA(d_in), FLOOR)      (EMA over model frames, weight ALPHA)

A ratio, so that a moving scene is not called flicker (the output moves as much as the input: ~1),
while a still scene whose picture boils is (the input hardly changes, the output does: well above
1). Averages before the ratio, so one near-still frame does not spike it. FLOOR (0.5 % of full
scale, far above what camera noise leaves on a 16x16-pixel average) keeps a still scene's ratio
finite: there it reads as the output's own change in units of FLOOR.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

THUMBNAIL = 32
ALPHA = 0.1  # ~10 model frames of memory: a figure that settles within a second at live rates
FLOOR = 0.005
# BT.601 luma of RGB in [-1, 1], as the colour conversion reads it.
_LUMA = (0.299, 0.587, 0.114)


def luma_thumbnails(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, THUMBNAIL, THUMBNAIL) float32 luma in [0, 1]."""
    weights = torch.tensor(_LUMA, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    luma = (images.float() * weights).sum(dim=1, keepdim=True) * 0.5 + 0.5
    return F.adaptive_avg_pool2d(luma, THUMBNAIL).squeeze(1)


class FlickerSlots:
    """Each stream's last input and output thumbnails on the device, one slot per stream
    (`pipeline.stream_slots`, the scratch slot included)."""

    def __init__(self, device: torch.device, slots: int) -> None:
        self._last = torch.zeros((slots, 2, THUMBNAIL, THUMBNAIL), device=device)

    def measure(self, slots: torch.Tensor, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """(d_in, d_out) per row, (B, 2) float32 on the device, against each row's slot's last
        thumbnails, which this row's then replace (a stream's first frame reads what its slot held
        before: the host drops that pair).

        slots: (B,) int64, distinct but for the scratch slot; inputs, outputs: (B, 3, H, W) in [-1, 1].
        """
        now = torch.stack((luma_thumbnails(inputs), luma_thumbnails(outputs)), dim=1)
        change = (now - self._last.index_select(0, slots)).abs().mean(dim=(2, 3))
        self._last.index_copy_(0, slots, now)
        return change


@dataclass
class _Figure:
    d_in: float
    d_out: float

    @property
    def flicker(self) -> float:
        return self.d_out / max(self.d_in, FLOOR)


class FlickerFigures:
    """Each stream's smoothed figure on the host: the engine's thread adds, any thread reads."""

    def __init__(self) -> None:
        self._figures: dict[str, _Figure] = {}
        self._lock = threading.Lock()

    def add(self, key: str, d_in: float, d_out: float) -> float:
        """One measurement for `key`; its figure after it."""
        with self._lock:
            figure = self._figures.get(key)
            if figure is None:
                figure = self._figures[key] = _Figure(d_in, d_out)
            else:
                figure.d_in += ALPHA * (d_in - figure.d_in)
                figure.d_out += ALPHA * (d_out - figure.d_out)
            return figure.flicker

    def of(self, key: str) -> float | None:
        with self._lock:
            figure = self._figures.get(key)
            return figure.flicker if figure is not None else None

    def forget(self, key: str) -> None:
        with self._lock:
            self._figures.pop(key, None)
