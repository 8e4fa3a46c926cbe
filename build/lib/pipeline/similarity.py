"""The similarity filter: a frame much like its stream's last one, with the same settings, reuses the
last output instead of running the model (a still camera costs nothing). Off at threshold 0."""

from __future__ import annotations

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


class SimilarityFilter:
    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._last: dict[str, _LastFrame] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    def reuse(self, request: Request) -> np.ndarray | None:
        """The stream's last output when `request` differs from its last frame by less than the
        threshold (mean absolute luma difference on a thumbnail, as a share of 255)."""
        if not self.enabled:
            return None
        with self._lock:
            last = self._last.get(request.key)
        if last is None or last.params != request.params or last.output.shape != request.frame.shape:
            return None
        difference = np.abs(request.thumbnail - last.thumbnail).mean() / 255.0
        return last.output if difference < self.threshold else None

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
