"""Who makes room for a new offer: sessions (or viewers) whose connection is not up yet.

An offer whose peer never connects held its slot for `[server] connect_timeout_s`: a client that
kept re-sending offers kept every slot full, and people got in 3 times in 30 (WHEP viewers never).
So before an offer is refused, room is made: a client's own earlier attempts that have not
connected are closed past `[server] max_unconnected_per_client` (a re-sent offer supersedes the
last), and when every slot is still taken, the oldest attempt not connected after `offer_grace_s`
gives its slot to the new one. Connected sessions are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Attempt:
    """A session or viewer whose connection is not up: who asked for it and since when (monotonic)."""

    id: str
    client: str | None
    since: float


def make_room(
    attempts: list[Attempt], client: str | None, in_use: int, limit: int, per_client: int, grace_s: float, now: float
) -> list[str]:
    """The ids of attempts to close before admitting an offer from `client` (the caller checks the limit after)."""
    oldest_first = sorted(attempts, key=lambda attempt: attempt.since)
    own = [attempt for attempt in oldest_first if attempt.client == client]
    closing = [attempt.id for attempt in own[: max(0, len(own) - per_client + 1)]]
    if in_use - len(closing) >= limit:
        stale = [a.id for a in oldest_first if a.id not in closing and now - a.since >= grace_s]
        closing += stale[:1]
    return closing
