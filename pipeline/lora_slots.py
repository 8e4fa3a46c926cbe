"""Which LoRA each device slot of the `LoraBank` holds: least recently used goes first, but never one a
row of the batch being placed wears. Owned by the engine thread (no lock): only that thread copies
LoRAs into slots, in the compute stream's order, so a batch still running on the device finishes with
the weights it was launched with before a later batch's copy overwrites them."""

from __future__ import annotations

from collections import OrderedDict


class LoraSlots:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._held: OrderedDict[str, int] = OrderedDict()  # source -> slot, least recently used first
        self._free = list(range(capacity - 1, -1, -1))
        self.loads = 0  # LoRAs copied into a slot so far
        self.evictions = 0

    def find(self, source: str) -> int | None:
        """The slot holding `source` (now the most recently used), or None."""
        slot = self._held.get(source)
        if slot is not None:
            self._held.move_to_end(source)
        return slot

    def claim(self, source: str, busy: set[int]) -> int | None:
        """A slot for `source`: a free one, or the least recently used one not in `busy` (its LoRA is
        evicted); None when every slot is busy. The caller then copies `source` into it."""
        if self._free:
            slot = self._free.pop()
        else:
            victim = next((held for held, slot in self._held.items() if slot not in busy), None)
            if victim is None:
                return None
            slot = self._held.pop(victim)
            self.evictions += 1
        self._held[source] = slot
        self.loads += 1
        return slot

    def drop(self, source: str) -> None:
        """`source` did not make it into its slot (its copy failed): the slot is free again."""
        slot = self._held.pop(source, None)
        if slot is not None:
            self._free.append(slot)

    def held(self) -> dict[str, int]:
        return dict(self._held)
