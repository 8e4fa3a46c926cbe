"""Slots: each stream's place in the engine's per-stream device memory (its last flicker thumbnails,
its previous output latent). A fixed number, so the tensors that hold them never move and a captured
CUDA graph can index them; one more, the scratch slot, takes the rows of streams past the capacity
(and padding), which so get no memory rather than someone else's. A stream that leaves frees its
slot; the next stream to take it starts fresh (the slot's content is not read before it is written).
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)


class StreamSlots:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.scratch = capacity  # the slot of rows without one of their own
        self._slots: dict[str, int] = {}
        self._free = list(range(capacity - 1, -1, -1))
        self._fresh: set[str] = set()
        self._full_logged = False
        self._lock = threading.Lock()

    def take(self, key: str) -> tuple[int, bool]:
        """`key`'s slot (the scratch slot when all are taken) and whether this is its first frame there."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                if not self._free:
                    if not self._full_logged:
                        logger.warning(
                            "all %d stream memory slots taken: stream=%s runs without one", self.capacity, key
                        )
                        self._full_logged = True
                    return self.scratch, True
                slot = self._slots[key] = self._free.pop()
                self._fresh.add(key)
            fresh = key in self._fresh
            self._fresh.discard(key)
            return slot, fresh

    def holds(self, key: str) -> bool:
        with self._lock:
            return key in self._slots

    def release(self, key: str) -> None:
        with self._lock:
            slot = self._slots.pop(key, None)
            if slot is not None:
                self._free.append(slot)
                self._full_logged = False
            self._fresh.discard(key)
