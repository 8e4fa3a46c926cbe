"""JSON errors at the edge: every 4xx is `{"error": ..., "detail": ...}`, never a 500 for bad input.

Bad fields are listed as `server.fields.field_error` items, whichever check found them. An
unexpected exception becomes `500 {"error": "internal", "id": ...}`, its traceback logged under
that id so an operator can find it from what the client saw.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import uuid
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel, ValidationError

from server.fields import field_error, validation_detail

logger = logging.getLogger(__name__)

# What a full disk (or a file-size limit) raises: the server's state, not a bug; 507, not 500.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

M = TypeVar("M", bound=BaseModel)

# A refused body may be left unread on the connection: answer, then close it.
CLOSE_AFTER = frozenset({408, 413})


def json_error(status: int, error: str, detail: Any = None) -> web.Response:
    response = web.json_response({"error": error, "detail": detail}, status=status)
    if status in CLOSE_AFTER:
        response.force_close()
    return response


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


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as e:
        return json_error(e.status, e.error, e.detail)
    except RequestPayloadError as e:
        # A body its Content-Encoding does not describe (gzip declared, plain bytes sent): the
        # client's mistake. What is left of the body cannot be read either: it counts as ended (aiohttp
        # would try to read it after the answer, and fail again) and the connection closes after the answer.
        request.content.feed_eof()
        reason = str(e.__cause__ or e).replace("\n", " ").strip()
        detail = {"content_encoding": request.headers.get("Content-Encoding"), "reason": reason}
        response = json_error(400, "request body cannot be decoded", detail)
        response.force_close()
        return response
    except (OSError, sqlite3.OperationalError) as e:
        if not disk_full(e):
            return _internal(request)
        logger.error("disk full %s %s: %s", request.method, request.rel_url.path, e)
        return json_error(507, "insufficient storage", "the server's disk is full: nothing was saved")
    except web.HTTPException as e:
        if e.status < 400 or not request.path.startswith("/api/"):
            raise
        return json_error(e.status, e.reason, None)
    except Exception:
        return _internal(request)


def _internal(request: web.Request) -> web.Response:
    """The 500 for an unexpected failure (called while it is handled: the traceback goes to the log)."""
    error_id = uuid.uuid4().hex[:12]
    logger.exception("unexpected error id=%s %s %s", error_id, request.method, request.rel_url.path)
    return web.json_response({"error": "internal", "id": error_id}, status=500)


def disk_full(error: BaseException) -> bool:
    """True for the errors a full disk gives: OSError ENOSPC/EDQUOT/EFBIG, SQLite's "disk is full"."""
    if isinstance(error, OSError):
        return error.errno in DISK_FULL
    return isinstance(error, sqlite3.OperationalError) and "disk is full" in str(error)
