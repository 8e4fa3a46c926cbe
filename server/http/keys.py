"""The http edge's app and request state."""

from __future__ import annotations

from typing import Any

from aiohttp import web

# The OpenAPI document, built at start-up from the routes (GET /openapi.json).
OPENAPI: web.AppKey[dict[str, Any]] = web.AppKey("http.openapi")
# The client's address as the security middleware found it (a trusted proxy's X-Forwarded-For believed).
CLIENT: web.RequestKey[str] = web.RequestKey("http.client")
