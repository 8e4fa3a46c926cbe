"""What a request brings: its body read whole within a size and a time limit, JSON parsed within
bounds, and both body and query string validated into the route's pydantic model.

`request.content.read(n)` answers with what is buffered so far, not `n` bytes: a body that reaches
the server in two TCP reads (a browser on Wi-Fi) looked cut short, and a body promised by
Content-Length that never came was waited for forever. `read_body` reads to the end of the body
with one deadline for all of it. `parse_json` (server.bounded_json) refuses what `json.loads` would choke on before it
can: nesting deeper than any request model has, integers longer than any field takes, and the
NaN/Infinity words strict JSON has not got.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from server import keys
from server.bounded_json import parse_json
from server.http.errors import ApiError, validate
from server.http.openapi import operation_of

M = TypeVar("M", bound=BaseModel)


async def read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The whole body: 413 past `limit` bytes, 408 when it has not all come within `timeout_s`."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "request body too large", {"limit_bytes": limit})
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "request body too large", {"limit_bytes": limit})
                chunks.append(chunk)
    except TimeoutError as e:
        detail = {"received_bytes": size, "declared_bytes": request.content_length, "timeout_s": timeout_s}
        raise ApiError(408, "request body timed out", detail) from e
    return b"".join(chunks)


async def read_json_object(request: web.Request, limit: int, timeout_s: float) -> dict[str, Any]:
    """The body as a JSON object: 415 unless sent as application/json, 413, 408, 400 if not an object."""
    if request.content_type != "application/json":
        raise ApiError(415, "body must be application/json", {"content_type": request.content_type})
    raw = await read_body(request, limit, timeout_s)
    try:
        data = parse_json(raw)
    except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors too
        raise ApiError(400, "body is not valid JSON", str(e)) from e
    if not isinstance(data, dict):
        raise ApiError(400, "body must be a JSON object", type(data).__name__)
    return data


def _check_declared(request: web.Request, model: type[BaseModel], part: str) -> None:
    """The model must be the one the route declares with `@operation`: the published contract is what is checked."""
    declared = operation_of(request.match_info.handler)
    if declared is not None and getattr(declared, part) is not model:
        raise RuntimeError(f"{request.method} {request.path} reads its {part} as {model.__name__}, not as declared")


async def read_model(request: web.Request, model: type[M]) -> M:
    """The JSON body as `model`: 415, 413, 408, 400 (not a JSON object) or 422 (naming each bad field)."""
    _check_declared(request, model, "body")
    server = request.app[keys.CONFIG].server
    data = await read_json_object(request, server.max_body_kb * 1024, server.body_timeout_s)
    return validate(model, data)


def read_query(request: web.Request, model: type[M]) -> M:
    """Parse the query string into `model` (lax: "5" is an int there): 422 naming the bad field.

    `?token=` is the security scheme's, checked before any route (see `security.py`), not the route's.
    """
    _check_declared(request, model, "query")
    query = {name: value for name, value in request.query.items() if name != "token"}
    return validate(model, query, "invalid query")
