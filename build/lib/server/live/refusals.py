"""Why a new stream was refused, as the HTTP errors every way in answers (the page's offer, WHIP)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from server.engine_service import EngineNotReady
from server.http.errors import ApiError
from server.live.peers import OfferRejected, PeersFull


@contextlib.contextmanager
def refusals_as_http() -> Iterator[None]:
    """503 while the model is not ready or every slot is taken, 400 for an offer aiortc refuses."""
    try:
        yield
    except EngineNotReady as e:
        raise ApiError(503, "model not ready", {"state": e.state, "reason": e.reason}) from e
    except PeersFull as e:
        raise ApiError(503, "server full", str(e)) from e
    except OfferRejected as e:
        raise ApiError(400, "offer rejected", str(e)) from e
