"""The http edge's app state."""

from __future__ import annotations

from typing import Any

from aiohttp import web

# The OpenAPI document, built at start-up from the routes (GET /openapi.json).
OPENAPI: web.AppKey[dict[str, Any]] = web.AppKey("http.openapi")
