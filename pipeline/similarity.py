"""The similarity filter: a frame much like its stream's last modelled one, with the same settings,
reuses that output instead of running the model (a still camera costs little). Off at threshold 0.

Stochastic, as StreamDiffusion's: a frame whose difference from the last modelled one is d (mean
absolute luma difference on a thumbnail, as a share of 255) is skipped with probability
max(0, 1 - d / threshold), so the output does not freeze at one hard edge and jump at the next;
and after `max_skip` skips in a row a stream's frame runs the model whatever it looks like, so a
slow drift (light fading) still reaches the picture. Per stream: each keeps its last frame and count.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.contract import FrameParams
from pipeline.scheduler import Request


@dataclass
class _LastFrame:
    thumbnail: np.ndarray
    params: FrameParams
    output: np.ndarray
    skipped: int = 0  # reuses of `output` in a row


class SimilarityFilter:
    def __init__(self, threshold: float, max_skip: int = 10, seed: int = 0) -> None:
        self.threshold = threshold
        self.max_skip = max_skip
        self._last: dict[str, _LastFrame] = {}
        self._lock = threading.Lock()
        self._random = random.Random(seed)  # seeded: a run's skips can be replayed

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    def reuse(self, request: Request) -> np.ndarray | None:
        """The stream's last output when `request` is drawn to be skipped (see the module docstring)."""
        if not self.enabled:
            return None
        with self._lock:
            last = self._last.get(request.key)
            if last is None or last.params != request.params or last.output.shape != request.frame.shape:
                return None
            if last.skipped >= self.max_skip:
                return None
            difference = float(np.abs(request.thumbnail - last.thumbnail).mean()) / 255.0
            if self._random.random() >= max(0.0, 1.0 - difference / self.threshold):
                return None
            last.skipped += 1
            return last.output

    def remember(self, request: Request, output: np.ndarray, known: Callable[[str], bool]) -> None:
        """Keep `output` as the stream's last, unless `known` says the stream has left: checked under
        this filter's lock, so a `forget` that follows the stream's leaving never misses an entry."""
        if self.enabled:
            with self._lock:
                if known(request.key):
                    self._last[request.key] = _LastFrame(request.thumbnail, request.params, output)

    def forget(self, key: str) -> None:
        with self._lock:
            self._last.pop(key, None)
