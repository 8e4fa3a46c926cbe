"""What /monitor shows since its last reset: the average render-job time and the recent activity.

Both are read off the events every node's hub receives (a cluster's front hears its workers' too), so
they need no merging across nodes. A reset starts them over and hides the errors logged before it;
the Prometheus counters never go back (a scraper takes the rates).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

ACTIVITY_KEPT = 20


def summary(event: dict[str, Any]) -> str:
    """One event in a few words: `settings global: strength (http)`, `job completed clip.mp4`."""
    kind = event.get("type")
    if kind == "settings":
        changed = ", ".join(sorted(event.get("changed") or {})) or "nothing"
        return f"settings {event.get('scope')}: {changed} ({event.get('source')})"
    if kind == "stream":
        reason = f" ({event['reason']})" if event.get("reason") else ""
        return f"stream {event.get('action')} {event.get('stream_id')}{reason}"
    if kind == "job":
        job = event.get("job") or {}
        return f"job {event.get('action')} {job.get('filename')}"
    if kind == "preset":
        scope = f" on {event['scope']}" if event.get("scope") else ""
        return f"preset {event.get('action')} {event.get('preset_id')}{scope}"
    return str(kind)


class Activity:
    """Watches the event hub (`EventHub.add_watcher(activity.see)`); read by /api/stats."""

    def __init__(self, kept: int = ACTIVITY_KEPT) -> None:
        self._recent: deque[dict[str, Any]] = deque(maxlen=kept)
        self.reset_at = time.time()
        self._jobs_done = 0
        self._jobs_seconds = 0.0

    def see(self, event: dict[str, Any]) -> None:
        if event.get("type") == "job" and event.get("action") == "progress":
            return  # a line per frame batch would push everything else out
        self._recent.append({"ts": event.get("ts"), "type": event.get("type"), "summary": summary(event)})
        seconds = (event.get("job") or {}).get("processing_s")
        if event.get("type") == "job" and event.get("action") == "completed" and isinstance(seconds, int | float):
            self._jobs_done += 1
            self._jobs_seconds += float(seconds)

    def reset(self) -> None:
        self._recent.clear()
        self._jobs_done, self._jobs_seconds = 0, 0.0
        self.reset_at = time.time()

    def describe(self) -> dict[str, Any]:
        average = round(self._jobs_seconds / self._jobs_done, 2) if self._jobs_done else None
        return {
            "reset_at": self.reset_at,
            "jobs_completed": self._jobs_done,
            "job_average_s": average,
            "recent": list(reversed(self._recent)),  # newest first
        }
