"""What this process is in the deployment, decided once from the config and handed to the rooms that
differ: none of them infers its role from another room's state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from server.config import Config


@dataclass(frozen=True)
class Topology:
    role: Literal["alone", "worker", "front"]
    starts_workers: bool = False  # a front that starts its own workers (and Redis): `--workers N`

    @classmethod
    def of(cls, config: Config) -> Topology:
        cluster = config.cluster
        if cluster.role == "none":
            return cls("alone")
        return cls(cluster.role, starts_workers=cluster.role == "front" and bool(cluster.workers))

    @property
    def shares_state(self) -> bool:
        """Settings, presets, events and jobs live in Redis, shared by every node (not in SQLite)."""
        return self.role != "alone"

    @property
    def runs_engine(self) -> bool:
        """The model runs here; a front's engine is its workers'."""
        return self.role != "front"

    @property
    def runs_live(self) -> bool:
        """WebRTC peers, outputs and viewers live here; a front relays the live routes to its workers."""
        return self.role != "front"

    @property
    def renders_jobs(self) -> bool:
        """Render jobs run here; a front only takes, lists and cancels them."""
        return self.runs_engine
