"""A front door: it serves the page, the API, OSC and the events, and hands what needs an engine to
the workers. New streams (offers, WHIP) go to the least-loaded ready worker (fewest streams, then
the least busy engine), only their SDP passing through here: the answer carries the worker's ICE
candidates and the media flows between the caller and the worker. Whatever concerns a stream goes
to the worker it runs on; lists (streams, outputs) are gathered from every worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import TypeAdapter

from server.bounded_json import parse_json
from server.cluster.registry import Registry
from server.cluster.replicated_settings import ReplicatedSettings
from server.config import Config
from server.control.model_ask import asked_model, could_run, not_on_offer, runs
from server.engine_service import EngineNotReady, State
from server.fields import DEFAULT_NAME, LATEST, ModelAsk
from server.http.errors import ApiError
from server.http.inputs import read_body
from server.http.relay import NodeUnreachable, Relay, unreachable

if TYPE_CHECKING:
    from pipeline import Engine

logger = logging.getLogger(__name__)

# How far along a worker's engine is, best last: the front says what its best worker says.
PROGRESS = {"stopped": 0, "failed": 1, "loading": 2, "warming": 3, "ready": 4}
NO_WORKERS = "no worker has registered yet"
# A fan-out asks every worker at once and waits this long at most for each.
FAN_OUT_S = 3.0
# An offer's `model`, checked as the worker will before the front places by it.
_MODEL_ASK: TypeAdapter[ModelAsk | None] = TypeAdapter(ModelAsk | None)
# A stream this front started counts for its worker until Redis has told every replica of it: a moment.
ROUTED_GRACE_S = 2.0


class WorkerEngines:
    """The engine as a front sees it (an `EngineStatus`): its workers'. Ready while one is; otherwise
    the furthest along. No engine runs here."""

    def __init__(self) -> None:
        self.state: State = "loading"
        self.reason = NO_WORKERS
        self._best: dict[str, Any] = {}
        self.workers = 0

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def engine(self) -> Engine:
        raise EngineNotReady(self.state, "the engines run on the workers")

    def start(self) -> None:
        """Nothing to load here: the workers load theirs."""

    def stop(self) -> None:
        self.state = "stopped"
        self.reason = "server shutting down"

    def update(self, nodes: list[dict[str, Any]]) -> None:
        """A `Registry` view listener."""
        if self.state == "stopped":
            return
        workers = [node for node in nodes if node.get("role") == "worker"]
        self.workers = len(workers)
        if not workers:
            self.state, self.reason, self._best = "loading", NO_WORKERS, {}
            return
        best = max(workers, key=lambda node: PROGRESS.get(str(node.get("state")), 0))
        self._best = dict(best.get("engine") or {})
        self.state = best.get("state", "loading")
        ready = sum(1 for node in workers if node.get("state") == "ready")
        self.reason = f"{ready} of {len(workers)} workers ready" if ready else str(best.get("reason", ""))

    def describe(self) -> dict[str, object]:
        return {**self._best, "state": self.state, "reason": self.reason, "workers": self.workers}


class Front:
    def __init__(self, config: Config, registry: Registry, settings: ReplicatedSettings, relay: Relay) -> None:
        self._config = config
        self._registry = registry
        self._settings = settings
        self._relay = relay
        self._inflight: Counter[str] = Counter()  # offers on their way to each worker (by instance)
        # Streams this front started, by id -> (worker instance, when), until the replica knows them.
        self._routed: dict[str, tuple[str, float]] = {}

    # -- choosing a worker ---------------------------------------------------------------------

    def candidates(self) -> list[dict[str, Any]]:
        """Ready workers, the least loaded first: fewest streams (with offers on their way), then least busy."""
        streams: Counter[str] = Counter(owner.instance for _, owner in self._settings.streams().values())
        now = time.monotonic()
        for stream_id, (instance, when) in list(self._routed.items()):
            known = self._settings.owner(stream_id) is not None or self._settings.departed(stream_id)
            if not known and now - when < ROUTED_GRACE_S:
                streams[instance] += 1  # started through here, not yet heard of through Redis
            else:
                del self._routed[stream_id]
        ready = [node for node in self._registry.workers() if node.get("state") == "ready"]

        def load(node: dict[str, Any]) -> tuple[float, float, str]:
            instance = node["instance"]
            return (streams[instance] + self._inflight[instance], float(node.get("busy") or 0.0), node["id"])

        return sorted(ready, key=load)

    def _any_worker(self) -> dict[str, Any]:
        workers = self.candidates() or self._registry.workers()
        if not workers:
            raise ApiError(503, "model not ready", {"state": "loading", "reason": NO_WORKERS})
        return workers[0]

    def holder(self, stream_id: str) -> dict[str, Any] | None:
        """The worker a stream runs on, if the cluster knows the stream and its worker is up."""
        owner = self._settings.owner(stream_id)
        node = self._registry.worker(owner.node) if owner is not None else None
        return node if node is not None and owner is not None and node["instance"] == owner.instance else None

    def name_holder(self, name: str) -> dict[str, Any] | None:
        """The worker of a name's newest stream (`latest`: of the newest stream)."""
        for stream_id, (stream_name, _) in reversed(self._settings.streams().items()):
            if name in (LATEST, stream_name):
                return self.holder(stream_id)
        return None

    # -- relaying ------------------------------------------------------------------------------

    async def new_stream(self, request: web.Request) -> web.StreamResponse:
        """Offer (or WHIP) to the least-loaded ready worker running the model it asks for (any, when it
        asks for none); the next one when it is full or gone; 409 naming the models on offer when no
        worker runs it."""
        body = await self._body(request)
        candidates = self.candidates()
        asked = self._asked_model(request, body)
        if asked is not None:
            workers = self._registry.workers()
            if workers and not any(could_run(node, asked) for node in workers):
                raise not_on_offer(asked, workers)
            candidates = [node for node in candidates if runs(node, asked)]
        tried: list[str] = []
        for node in candidates:
            instance = node["instance"]
            self._inflight[instance] += 1
            try:
                response = await self._relay.forward(request, node["url"], body)
            except NodeUnreachable as e:
                logger.warning("worker %s did not take an offer (%s); trying the next", node["id"], e)
                tried.append(node["id"])
                continue
            finally:
                self._inflight[instance] -= 1
            if response.status == 503 and _error(response) == "server full":
                tried.append(node["id"])
                continue
            stream_id = _started_stream(response)
            if stream_id is not None:
                self._routed[stream_id] = (instance, time.monotonic())
                logger.info("stream %s started on worker %s", stream_id, node["id"])
            return response
        if tried:
            raise ApiError(503, "server full", f"every worker is full or unreachable: {', '.join(tried)}")
        raise ApiError(503, "model not ready", self._engines_state())

    def _asked_model(self, request: web.Request, body: bytes | None) -> str | None:
        """The model a new stream asks for: the offer's `model`, else its name's setting (WHIP sends
        only SDP: its name's). An offer too malformed to read is the worker's to refuse (422)."""
        name = request.match_info.get("name")
        own: Any = request.query.get("model")  # WHIP's ?model=
        if name is None:  # an offer: JSON
            try:
                offer = parse_json(body or b"")  # bounded, as the worker reads it
                name, own = offer.get("name", DEFAULT_NAME), offer.get("model")
                _MODEL_ASK.validate_python(own)
            except (ValueError, AttributeError):
                return None
        return asked_model(self._settings, name, own) if isinstance(name, str) else None

    def _engines_state(self) -> dict[str, Any]:
        workers = self._registry.workers()
        if not workers:
            return {"state": "loading", "reason": NO_WORKERS}
        best = max(workers, key=lambda node: PROGRESS.get(str(node.get("state")), 0))
        return {"state": best.get("state"), "reason": best.get("reason")}

    async def to_stream(self, request: web.Request) -> web.StreamResponse:
        """To the worker the path's stream runs on (an unknown stream: any worker, which answers 404)."""
        node = self.holder(request.match_info["stream_id"]) or self._any_worker()
        return await self._forward(request, node)

    async def to_name(self, request: web.Request) -> web.StreamResponse:
        """To the worker of the path's name's newest stream; without one, the least-loaded worker."""
        node = self.name_holder(request.match_info["name"]) or self._any_worker()
        return await self._forward(request, node)

    async def to_viewer(self, request: web.Request) -> web.StreamResponse:
        """To whichever worker knows the path's WHEP viewer (each is asked in turn); else its 404.

        A viewer that connected before its name streamed may sit on another worker than the one its
        name now streams on: asked for its session (what the player does while no frames come), it
        is told it is unknown, so the player connects again and lands where the frames are.
        """
        workers = self._registry.workers()
        if not workers:
            return await self._forward(request, self._any_worker())
        response: web.StreamResponse | None = None
        for node in workers:
            response = await self._forward(request, node)
            if response.status == 404:
                continue
            holder = self.name_holder(request.match_info["name"])
            if request.method == "GET" and holder is not None and holder["instance"] != node["instance"]:
                where = {"name": request.match_info["name"], "viewer_id": request.match_info["viewer_id"]}
                raise ApiError(404, "unknown viewer", {**where, "why": "the name streams on another worker now"})
            return response
        assert response is not None
        return response

    async def _forward(self, request: web.Request, node: dict[str, Any]) -> web.StreamResponse:
        try:
            return await self._relay.forward(request, node["url"], await self._body(request))
        except NodeUnreachable as e:
            raise unreachable(e) from e

    async def _body(self, request: web.Request) -> bytes | None:
        if not request.body_exists:
            return None
        server = self._config.server
        return await read_body(request, server.max_body_kb * 1024, server.body_timeout_s)

    # -- gathering -----------------------------------------------------------------------------

    async def ask_workers(self, path: str) -> list[tuple[dict[str, Any], Any]]:
        """GET `path` from every worker at once: (worker, JSON answer) of each that answered 200."""
        workers = self._registry.workers()

        async def ask(node: dict[str, Any]) -> tuple[dict[str, Any], Any] | None:
            try:
                status, answer = await self._relay.json("GET", node["url"] + path, timeout_s=FAN_OUT_S)
            except NodeUnreachable as e:
                logger.info("worker %s left out of %s: %s", node["id"], path, e)
                return None
            return (node, answer) if status == 200 else None

        return [found for found in await asyncio.gather(*map(ask, workers)) if found is not None]

    async def texts(self, path: str, accept: str) -> list[str]:
        """GET `path` as text from every worker at once (those that answer)."""

        async def ask(node: dict[str, Any]) -> str | None:
            try:
                return await self._relay.text(node["url"] + path, accept, timeout_s=FAN_OUT_S)
            except NodeUnreachable as e:
                logger.info("worker %s left out of %s: %s", node["id"], path, e)
                return None

        answers = await asyncio.gather(*map(ask, self._registry.workers()))
        return [text for text in answers if text is not None]

    async def streams(self) -> list[dict[str, Any]]:
        """Every worker's streams, each with its `worker`, oldest first."""
        found = [
            {**stream, "worker": node["id"]}
            for node, answer in await self.ask_workers("/api/streams")
            for stream in answer.get("streams", [])
        ]
        return sorted(found, key=lambda stream: float(stream.get("created") or 0.0))

    async def outputs(self) -> list[dict[str, Any]]:
        """Every name's output across the workers: live where one streams it, viewers and watchers summed."""
        merged: dict[str, dict[str, Any]] = {}
        for node, answer in await self.ask_workers("/api/outputs"):
            for output in answer.get("outputs", []):
                name = str(output["name"])
                seen = merged.setdefault(name, {**output, "viewers": 0, "mjpeg": 0, "frames": 0, "workers": []})
                for count in ("viewers", "mjpeg", "frames"):
                    seen[count] += int(output.get(count) or 0)
                if output.get("state") == "live":
                    seen.update(state="live", stream_id=output.get("stream_id"))
                    seen["workers"].append(node["id"])
        streams = self._settings.streams()
        for name, output in merged.items():
            newest = [sid for sid, (stream_name, _) in streams.items() if name in (LATEST, stream_name)]
            if newest:
                output["stream_id"] = newest[-1]
        return [merged[name] for name in sorted(merged, key=lambda n: (n != LATEST, n))]


def _error(response: web.StreamResponse) -> str | None:
    body = getattr(response, "body", None)
    if not isinstance(body, bytes):
        return None
    try:
        return str(json.loads(body).get("error"))
    except (ValueError, AttributeError):
        return None


def _started_stream(response: web.StreamResponse) -> str | None:
    """The stream a worker's answer started: the offer's `stream_id`, or the last part of WHIP's Location."""
    if response.status == 201 and "Location" in response.headers:
        return response.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
    body = getattr(response, "body", None)
    if response.status != 200 or not isinstance(body, bytes):
        return None
    try:
        return str(json.loads(body)["stream_id"])
    except (ValueError, KeyError, TypeError):
        return None
