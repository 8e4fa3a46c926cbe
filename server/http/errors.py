"""JSON errors at the edge: every 4xx is `{"error": ..., "detail": ...}`, never a 500 for bad input.

Bad fields are listed as `server.fields.field_error` items, whichever check found them.
"""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from server import keys
from server.fields import field_error, validation_detail

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


def invalid(field: str, message: str) -> ApiError:
    """A 422 naming one bad field."""
    return ApiError(422, "invalid fields", [field_error(field, message)])


def validate(model: type[M], data: Any, error: str = "invalid fields") -> M:
    """`model.model_validate(data)`, or a 422 listing every bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ApiError(422, error, validation_detail(e)) from e


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
    return validate(model, data)


def read_query(request: web.Request, model: type[M]) -> M:
    """Parse the query string into `model` (lax: "5" is an int there): 422 naming the bad field."""
    return validate(model, dict(request.query), "invalid query")


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
