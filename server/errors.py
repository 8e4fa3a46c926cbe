"""JSON errors at the edge: every 4xx is `{"error": ..., "detail": ...}`, never a 500 for bad input."""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from server import keys
from server.validation import validation_detail

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


def json_error(status: int, error: str, detail: Any = None) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status)


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail


async def read_model(request: web.Request, model: type[M]) -> M:
    """Parse the JSON body into `model`: 413 if too large, 400 if not a JSON object, 422 if invalid."""
    limit = request.app[keys.CONFIG].server.max_body_kb * 1024
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "request body too large", {"limit_bytes": limit})
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise ApiError(413, "request body too large", {"limit_bytes": limit})
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, "body is not valid JSON", str(e)) from e
    if not isinstance(data, dict):
        raise ApiError(400, "body must be a JSON object", type(data).__name__)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ApiError(422, "invalid fields", validation_detail(e)) from e


def read_query(request: web.Request, model: type[M]) -> M:
    """Parse the query string into `model` (lax: "5" is an int there): 422 naming the bad field."""
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as e:
        raise ApiError(422, "invalid query", validation_detail(e)) from e


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as e:
        return json_error(e.status, e.error, e.detail)
    except web.HTTPException as e:
        if e.status < 400 or not request.path.startswith("/api/"):
            raise
        return json_error(e.status, e.reason, None)
