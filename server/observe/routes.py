"""GET /metrics (Prometheus), GET /api/stats (JSON for /monitor and operators) and its reset."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from pydantic import BaseModel, Field

from server import keys
from server.http.openapi import operation
from server.observe import keys as observe_keys

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()


@routes.get("/metrics")
@operation(
    "Prometheus metrics (stylize_...)",
    tag="observe",
    response={"type": "string"},
    media_type="text/plain",
    description="OpenMetrics when the scraper asks for it in Accept.",
)
async def metrics(request: web.Request) -> web.Response:
    # Off the loop: the GPU memory gauge asks torch at scrape time.
    accept = request.headers.get("Accept", "")
    body, content_type = await asyncio.to_thread(request.app[keys.METRICS].render, accept)
    spanning = request.app.get(observe_keys.SPANNING)
    spanned = await spanning.metrics(body, accept) if spanning is not None else None
    if spanned is not None:  # a cluster's front: its workers' figures summed with its own
        body, content_type = spanned
    # The content type carries a version parameter, which aiohttp's content_type= refuses: a header.
    return web.Response(body=body, headers={"Content-Type": content_type})


@routes.get("/api/stats")
@operation(
    "Everything /monitor shows, as JSON",
    tag="observe",
    response={
        "type": "object",
        "description": "version, uptime_s, engine, frames, latency_ms, streams, jobs, presets, errors (since the "
        "last reset), activity (reset_at, jobs_completed, job_average_s, recent events newest first), disk, system",
    },
)
async def stats(request: web.Request) -> web.Response:
    app = request.app
    body = await app[observe_keys.STATS].report(app[keys.ENGINE], app[observe_keys.STREAMS]())
    spanning = app.get(observe_keys.SPANNING)
    return web.json_response(await spanning.stats(body) if spanning is not None else body)


class StatsReset(BaseModel):
    reset_at: float = Field(description="when the monitor's tallies started over (Unix time)")


@routes.post("/api/stats/reset")
@operation(
    "Start the monitor's tallies over",
    tag="observe",
    response=StatsReset,
    description="Clears the average job time and the recent activity, and hides the errors logged before now. "
    "The Prometheus counters keep counting.",
)
async def reset_stats(request: web.Request) -> web.Response:
    activity = request.app[observe_keys.STATS].activity
    activity.reset()
    logger.info("monitor tallies reset")
    return web.json_response({"reset_at": activity.reset_at})
