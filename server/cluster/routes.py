"""GET /api/cluster: the nodes of the cluster as this node last read them from Redis."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from server.cluster import keys as cluster_keys
from server.http.openapi import operation

routes = web.RouteTableDef()


class ClusterView(BaseModel):
    node: dict[str, Any] = Field(description="this node: id, role (front or worker), url")
    redis: dict[str, Any] = Field(description="the Redis URL (no password) and whether it answers now")
    read_at: float | None = Field(description="when the view was read from Redis (kept while it is away)")
    workers: list[dict[str, Any]] = Field(
        description="id, host, url, device, model, family, state, streams, max_peers, fps, busy, last_seen, pid, "
        "instance"
    )
    fronts: list[dict[str, Any]] = Field(description="id, host, url, last_seen")


@routes.get("/api/cluster")
@operation(
    "The cluster's workers and fronts, with each worker's load",
    tag="cluster",
    response=ClusterView,
    errors={404: "this server is not part of a cluster ([cluster] role)"},
)
async def cluster(request: web.Request) -> web.Response:
    return web.json_response(request.app[cluster_keys.CLUSTER].describe())
