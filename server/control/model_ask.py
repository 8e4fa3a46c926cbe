"""Which model a new stream asks for, and which engines run it.

An offer may carry `"model"`; without it, the name's saved `model` setting (or the global one) is
asked for, so a WHIP encoder, which sends only SDP, is placed by its name. An engine runs what it
was asked for when the ask is its model id or its family. A single server refuses an ask it does not
run; a cluster's front places the stream on a ready worker that runs it; either way the refusal is
a 409 naming what is on offer, so the caller can ask again for one of those.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from server.control.settings import SettingsStore, name_scope
from server.http.errors import ApiError


def asked_model(settings: SettingsStore, name: str, asked: str | None) -> str | None:
    """The offer's own ask, else the name's effective `model` setting (None: any model will do)."""
    return asked if asked is not None else settings.effective(name_scope(name)).model


def runs(described: Mapping[str, Any], asked: str) -> bool:
    """Whether an engine (its `describe()`) runs `asked`: its model id or its family."""
    return asked in (described.get("model"), described.get("family"))


def could_run(described: Mapping[str, Any], asked: str) -> bool:
    """Runs it, or may once loaded: while the model loads it has not said its family yet."""
    return runs(described, asked) or (described.get("state") == "loading" and not described.get("family"))


def refuse_unless_runs(described: Mapping[str, Any], asked: str | None) -> None:
    """A single server's (or a worker's) check of an offer's ask; an engine still loading is let
    through to the offer's own 503, which says so."""
    if asked is not None and not could_run(described, asked):
        raise not_on_offer(asked, [described])


def not_on_offer(asked: str, engines: Iterable[Mapping[str, Any]]) -> ApiError:
    return ApiError(
        409,
        "model not on offer",
        # The model ids, as an ask names them (`/api/cluster` says each one's family).
        {"model": asked, "on_offer": sorted({str(described.get("model")) for described in engines})},
    )
