"""The API contract: each route declares itself once, beside its handler, with `@operation(...)`;
`openapi_document(app)` turns the routes the app registered into an OpenAPI 3.1 document.

The body and query models named here are the ones `read_model`/`read_query` validate with (they
refuse a model the route did not declare), so the published contract cannot drift from what the
server accepts. Errors share one shape, `{"error", "detail"}`; unexpected failures are
`{"error": "internal", "id"}`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import AliasChoices, BaseModel
from pydantic.json_schema import models_json_schema

from server.http.security import MUTATING, needs_token

F = TypeVar("F", bound=Callable[..., Any])
Schema = type[BaseModel] | dict[str, Any]
BodyKind = Literal["json", "multipart"]

ATTRIBUTE = "__stylize_operation__"
REF = "#/components/schemas/{model}"
STATUS_TEXT = {
    400: "malformed request",
    401: "no token, or a wrong one",
    403: "cross-origin request refused",
    404: "not found",
    408: "the body stalled",
    409: "conflict",
    413: "the body is too large",
    415: "wrong content type",
    422: "invalid fields, each named",
    429: "too many requests (Retry-After)",
    503: "not ready or full",
    507: "the disk is full: nothing was saved",
}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "what went wrong, in a few words"},
        "detail": {
            "description": "more: a string or an object (a 422 lists the bad fields: InvalidFields)",
        },
    },
}
# Every 422 lists the bad fields the same way (server.fields.field_error).
INVALID_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "description": "what went wrong, in a few words"},
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message", "type"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}, "type": {"type": "string"}},
            },
        },
    },
}
INTERNAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "id"],
    "properties": {
        "error": {"const": "internal"},
        "id": {"type": "string", "description": "the id the traceback is logged under"},
    },
}


@dataclass(frozen=True)
class Operation:
    summary: str
    tag: str
    description: str = ""
    body: type[BaseModel] | None = None
    body_kind: BodyKind = "json"
    body_required: bool = True
    raw_body: str | None = None  # a body that is text of this media type, not a model (WHIP's application/sdp)
    query: type[BaseModel] | None = None
    response: Schema | None = None
    status: int = 200
    media_type: str = "application/json"
    errors: Mapping[int, str] = field(default_factory=dict)
    extra_responses: Mapping[int, tuple[str, Schema | None]] = field(default_factory=dict)


def operation(summary: str, *, tag: str, **details: Any) -> Callable[[F], F]:
    """Declare a handler's place in the API contract (see `Operation` for the fields)."""
    return _declaring(Operation(summary, tag, **details))


def declared_like(original: Callable[..., Any]) -> Callable[[F], F]:
    """Declare a handler as `original` is declared (a front door relaying another node's route)."""
    declared = operation_of(original)
    if declared is None:
        raise ValueError(f"{original.__qualname__} declares no @operation")
    return _declaring(declared)


def _declaring(declared: Operation) -> Callable[[F], F]:
    def mark(handler: F) -> F:
        setattr(handler, ATTRIBUTE, declared)
        return handler

    return mark


def operation_of(handler: Any) -> Operation | None:
    found = getattr(handler, ATTRIBUTE, None)
    return found if isinstance(found, Operation) else None


def openapi_document(
    app: web.Application, *, title: str, version: str, events: list[type[BaseModel]]
) -> dict[str, Any]:
    """OpenAPI 3.1 for every documented route of `app` (and its static folders); `events` are the
    WebSocket message models, listed as schemas."""
    routes: list[tuple[str, str, Operation]] = []
    for route in app.router.routes():
        resource = route.resource
        if resource is None:
            continue
        if isinstance(resource, web.StaticResource):
            routes.append((route.method, resource.canonical + "/{filename}", _static(resource)))
            continue
        declared = operation_of(route.handler)
        if declared is not None:
            routes.append((route.method, resource.canonical, declared))
    models = _models(routes, events)
    names, definitions = models_json_schema(models, ref_template=REF)
    schemas: dict[str, Any] = dict(definitions.get("$defs", {}))
    schemas.update({"Error": ERROR_SCHEMA, "InvalidFields": INVALID_SCHEMA, "InternalError": INTERNAL_SCHEMA})

    def ref(model: Schema | None, mode: Literal["validation", "serialization"]) -> dict[str, Any] | None:
        if model is None:
            return None
        if isinstance(model, dict):
            return model
        return names[(model, mode)]

    paths: dict[str, dict[str, Any]] = {}
    operation_ids: set[str] = set()
    for method, path, declared in routes:
        entry = _operation(method, path, declared, ref)
        entry["operationId"] = _operation_id(method, path, operation_ids)
        paths.setdefault(path, {})[method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": __doc__ or ""},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "[security] api_token"},
                "query": {"type": "apiKey", "in": "query", "name": "token", "description": "on a GET only"},
            },
        },
        "x-websocket-events": {
            "path": "/api/events",
            "messages": [{"$ref": REF.format(model=model.__name__)} for model in events],
        },
    }


def _static(resource: web.StaticResource) -> Operation:
    return Operation(
        f"A file under {resource.canonical}/",
        tag="pages",
        response={"type": "string", "format": "binary"},
        media_type="application/octet-stream",
        errors={404: "no such file"},
    )


def _models(
    routes: list[tuple[str, str, Operation]], events: list[type[BaseModel]]
) -> list[tuple[type[BaseModel], Literal["validation", "serialization"]]]:
    found: dict[tuple[type[BaseModel], str], None] = {}
    for _, _, declared in routes:
        for model in (declared.body, declared.query):
            if model is not None:
                found[(model, "validation")] = None
        for schema in (declared.response, *(schema for _, schema in declared.extra_responses.values())):
            if isinstance(schema, type):
                found[(schema, "serialization")] = None
    for model in events:
        found[(model, "serialization")] = None
    return list(found)  # type: ignore[arg-type]


def _operation(
    method: str, path: str, declared: Operation, ref: Callable[[Schema | None, Any], dict[str, Any] | None]
) -> dict[str, Any]:
    entry: dict[str, Any] = {"summary": declared.summary, "tags": [declared.tag]}
    if declared.description:
        entry["description"] = declared.description
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"\{([^}]+)\}", path)
    ]
    if declared.query is not None:
        parameters.extend(_query_parameters(declared.query))
    if parameters:
        entry["parameters"] = parameters
    if declared.body is not None and method in MUTATING:
        media = "application/json" if declared.body_kind == "json" else "multipart/form-data"
        entry["requestBody"] = {
            "required": declared.body_required,
            "content": {media: {"schema": ref(declared.body, "validation")}},
        }
    if declared.raw_body is not None and method in MUTATING:
        entry["requestBody"] = {"required": True, "content": {declared.raw_body: {"schema": {"type": "string"}}}}
    responses: dict[str, Any] = {}
    if method == "HEAD":
        responses[str(declared.status)] = {"description": "as GET, without the body"}
    else:
        success: dict[str, Any] = {"description": "success"}
        schema = ref(declared.response, "serialization")
        if schema is not None:
            success["content"] = {declared.media_type: {"schema": schema}}
        responses[str(declared.status)] = success
        for status, (text, extra) in declared.extra_responses.items():
            answer: dict[str, Any] = {"description": text}
            extra_schema = ref(extra, "serialization")
            if extra_schema is not None:
                answer["content"] = {"application/json": {"schema": extra_schema}}
            responses[str(status)] = answer
    errors = dict(declared.errors)
    if declared.body is not None or declared.query is not None:
        errors.setdefault(422, STATUS_TEXT[422])
    if (declared.body is not None or declared.raw_body is not None) and method in MUTATING:
        errors.update({status: STATUS_TEXT[status] for status in (400, 408, 413, 415) if status not in errors})
    if method in MUTATING or path == "/api/events":
        errors.setdefault(403, STATUS_TEXT[403])
    if needs_token(path):
        errors.setdefault(401, STATUS_TEXT[401])
        errors.setdefault(429, STATUS_TEXT[429])
        entry["security"] = [{"bearer": []}, {"query": []}] if method in ("GET", "HEAD") else [{"bearer": []}]
    elif method in MUTATING:
        errors.setdefault(429, STATUS_TEXT[429])
    if method in MUTATING and path.startswith("/api/"):
        # Any write may meet a full disk; on a cluster's front, a change may find the bus to its workers down.
        errors.setdefault(503, "not ready or full; on a cluster's front, the bus to the workers is down")
        errors.setdefault(507, STATUS_TEXT[507])
    for status, text in sorted(errors.items()):
        error = {"$ref": REF.format(model="InvalidFields" if status == 422 else "Error")}
        responses[str(status)] = {"description": text, "content": {"application/json": {"schema": error}}}
    responses["500"] = {
        "description": "an unexpected failure, logged under the id",
        "content": {"application/json": {"schema": {"$ref": REF.format(model="InternalError")}}},
    }
    entry["responses"] = responses
    return entry


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    parameters = []
    for name, info in model.model_fields.items():
        alias = info.validation_alias
        names = [str(choice) for choice in alias.choices] if isinstance(alias, AliasChoices) else [info.alias or name]
        property_schema = schema["properties"][names[0]]
        for index, parameter in enumerate(names):
            described = dict(property_schema)
            if index:
                described["description"] = f"the same as {names[0]}"
            parameters.append(
                {
                    "name": parameter,
                    "in": "query",
                    "required": names[0] in required and index == 0,
                    "schema": described,
                }
            )
    return parameters


def _operation_id(method: str, path: str, taken: set[str]) -> str:
    words = re.sub(r"[^a-zA-Z0-9]+", "_", path.replace("{", "by_").replace("}", "")).strip("_")
    name = f"{method.lower()}_{words or 'root'}"
    if path.endswith("/") and path != "/":
        name += "_slash"
    while name in taken:
        name += "_"
    taken.add(name)
    return name
