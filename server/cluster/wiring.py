"""The cluster room as the app sees it (only with `[cluster] role` set): the node's line to Redis and
its registry entry, the local workers and private Redis a `--workers N` front starts, GET
/api/cluster, and on a front every route of the live room, each relayed to the worker it concerns
(or answered here when it needs no worker).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_routedef import RouteDef

from server import keys
from server.cluster import keys as cluster_keys
from server.cluster import routes
from server.cluster.front import Front
from server.cluster.local import LocalCluster
from server.http.errors import json_error
from server.http.openapi import declared_like
from server.live import wiring as live

Relaying = Callable[[Front, web.Request], Awaitable[web.StreamResponse]]


async def _list_streams(front: Front, request: web.Request) -> web.StreamResponse:
    return web.json_response({"streams": await front.streams()})


async def _list_outputs(front: Front, request: web.Request) -> web.StreamResponse:
    return web.json_response({"outputs": await front.outputs()})


# How a front answers each route of the live room: relayed (to which worker), or here (None).
FRONT_ROUTES: dict[tuple[str, str], Relaying | None] = {
    ("POST", "/api/offer"): Front.new_stream,
    ("POST", "/api/whip/{name}"): Front.new_stream,
    ("GET", "/api/streams"): _list_streams,
    ("GET", "/api/streams/"): _list_streams,
    ("DELETE", "/api/streams/{stream_id}"): Front.to_stream,
    ("GET", "/api/streams/{stream_id}/snapshot.jpg"): Front.to_stream,
    ("GET", "/api/streams/{stream_id}/mjpeg"): Front.to_stream,
    ("DELETE", "/api/whip/{name}/{stream_id}/{secret}"): Front.to_stream,
    ("GET", "/api/outputs"): _list_outputs,
    ("GET", "/api/outputs/{name}/snapshot.jpg"): Front.to_name,
    ("GET", "/api/outputs/{name}/mjpeg"): Front.to_name,
    ("POST", "/api/outputs/{name}/whep"): Front.to_name,
    ("GET", "/api/outputs/{name}/whep/{viewer_id}"): Front.to_viewer,
    ("DELETE", "/api/outputs/{name}/whep/{viewer_id}"): Front.to_viewer,
    ("GET", "/view/{name}"): None,
    ("OPTIONS", "/api/whip/{name}"): None,
    ("OPTIONS", "/api/outputs/{name}/whep"): None,
    ("PATCH", "/api/whip/{name}/{stream_id}/{secret}"): Front.to_stream,
    ("PATCH", "/api/outputs/{name}/whep/{viewer_id}"): Front.to_viewer,
    ("GET", "/api/client-config"): None,
}


async def _local_cluster_ctx(app: web.Application) -> AsyncIterator[None]:
    """`--workers N`: the private Redis (unless `redis_url` names one) and the worker processes."""
    if not app[keys.TOPOLOGY].starts_workers:
        yield
        return
    local = LocalCluster(app[keys.CONFIG])
    await local.start()
    yield
    await local.stop()


async def _node_ctx(app: web.Application) -> AsyncIterator[None]:
    node = app[cluster_keys.CLUSTER]
    node.registry.describe = _worker_load(app) if node.front is None else dict
    await node.start()
    yield
    await node.close()


def _worker_load(app: web.Application) -> Callable[[], dict[str, Any]]:
    """What a worker's registry entry says of it (read on each beat, whatever has started by then)."""
    config = app[keys.CONFIG]
    metrics = app[keys.METRICS]

    def describe() -> dict[str, Any]:
        engine = app.get(keys.ENGINE)
        described = engine.describe() if engine is not None else {"state": "loading", "reason": "starting"}
        return {
            "state": described["state"],
            "reason": described["reason"],
            "device": described.get("device") or config.model.device,
            "model": described.get("model") or config.model.id,  # what offers asking for a model are placed by
            "family": described.get("family"),
            "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "engine": described,
            "streams": app[cluster_keys.LIVE_STREAMS](),
            "max_peers": config.server.max_peers,
            "fps": round(metrics.recent_out.rate(), 2),
            "busy": round(min(1.0, metrics.recent_busy.rate()), 3),
        }

    return describe


CONTEXTS: list[Callable[[web.Application], AsyncIterator[None]]] = [_local_cluster_ctx, _node_ctx]


MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@web.middleware
async def _bus_down(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    """On a front, a change that travels to the workers through Redis is 503 while Redis is away.

    Answered 200 and queued, a settings change reached no worker until Redis came back (never, when
    the private redis-server was not restarted): the caller is told instead, and may try again.
    Requests relayed straight to a worker (offers, hang-ups, viewers) do not need the bus.
    """
    if (
        request.method in MUTATING
        and request.path.startswith("/api/")
        and not request.app[cluster_keys.CLUSTER].link.up
    ):
        resource = request.match_info.route.resource
        path = resource.canonical if resource is not None else request.path
        if FRONT_ROUTES.get((request.method, path)) is None:
            return json_error(503, "cluster bus down", "Redis cannot be reached: the workers would not hear of it")
    return await handler(request)


def setup_routes(app: web.Application) -> None:
    app.add_routes(routes.routes)
    if not app[keys.TOPOLOGY].runs_live:  # a front: the live room's routes answered here or relayed
        app.middlewares.append(_bus_down)
        for table in live.ROUTES:
            for route in table:
                assert isinstance(route, RouteDef)
                RouteDef(route.method, route.path, _front_handler(route), route.kwargs).register(app.router)


def _front_handler(route: RouteDef) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The live room's handler where it needs no worker; otherwise one relaying it, declared alike."""
    if (route.method, route.path) not in FRONT_ROUTES:
        raise RuntimeError(f"a front does not know how to answer {route.method} {route.path}: add it to FRONT_ROUTES")
    relaying = FRONT_ROUTES[(route.method, route.path)]
    if relaying is None:
        return route.handler

    @declared_like(route.handler)
    async def relayed(request: web.Request) -> web.StreamResponse:
        front = request.app[cluster_keys.CLUSTER].front
        assert front is not None
        return await relaying(front, request)

    return relayed
