"""HTTP metrics: every request counted by route template, method and status, and timed by route.

Labels are the route as declared (`/api/jobs/{job_id}`), never the path asked for, so ids never
become label values; a request no route matched is counted under `unmatched`, and a method outside
HTTP's usual ones under `other`: nothing a client sends can grow the label sets.
"""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler

from server import keys

UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    if resource is None:
        return UNMATCHED
    if isinstance(resource, web.StaticResource):
        return resource.canonical + "/{filename}"
    return resource.canonical


@web.middleware
async def http_metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        method = request.method if request.method in METHODS else "other"
        request.app[keys.METRICS].observe_http(route_template(request), method, status, time.perf_counter() - started)
