"""The published contract: /openapi.json names every route the app registers, is valid OpenAPI 3.1,
and /docs shows it from the package (nothing from a CDN)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from openapi_spec_validator import validate

from server.config import Config
from server.control.events import SettingsEvent, event_message
from server.control.settings import StyleSettings
from server.http.openapi import operation_of
from server.testing.contract import Contract, ContractViolation
from server.testing.servers import RunningServer, start_server, stop_server


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    running = await start_server(make_config(engine={"warmup": False}, security={"api_token": "t"}), ready=False)
    yield running
    await stop_server(running)


async def document(server: RunningServer) -> dict[str, Any]:
    async with server.http.get(server.url("/openapi.json")) as response:
        assert response.status == 200  # open without the token
        return dict(await response.json())


async def test_every_registered_route_is_in_the_document(server: RunningServer) -> None:
    await _every_route_documented(server)


async def test_a_cluster_front_documents_the_same_routes_and_its_own(
    server: RunningServer, make_config: Callable[..., Config], redis_url: str
) -> None:
    """A front relays the live room's routes to its workers: the contract stays what one server publishes."""
    cluster = {"role": "front", "redis_url": redis_url, "prefix": "contract"}
    front = await start_server(make_config(cluster=cluster, security={"api_token": "t"}), ready=False)
    try:
        paths = await _every_route_documented(front)
        validate(await document(front))
        single = (await document(server))["paths"]
        # Recordings are on the disk of the worker that runs the name's stream: a front has none (yet).
        single = {path: operations for path, operations in single.items() if "recording" not in path}
        assert paths.keys() == single.keys() | {"/api/cluster"}
        for path, operations in single.items():
            assert paths[path].keys() == operations.keys(), path
            for method, entry in operations.items():
                assert paths[path][method]["summary"] == entry["summary"], (method, path)
    finally:
        await stop_server(front)


async def _every_route_documented(server: RunningServer) -> dict[str, Any]:
    paths: dict[str, Any] = (await document(server))["paths"]
    for route in server.app.router.routes():
        resource = route.resource
        assert resource is not None
        path = resource.canonical
        if isinstance(resource, web.StaticResource):
            path += "/{filename}"
        else:
            assert operation_of(route.handler) is not None, f"{route.method} {path} has no @operation"
        assert path in paths, path
        assert route.method.lower() in paths[path], f"{route.method} {path}"
    return paths


async def test_the_document_is_valid_openapi_3_1_with_errors_and_events(server: RunningServer) -> None:
    doc = await document(server)
    assert doc["openapi"] == "3.1.0"
    validate(doc)
    schemas = doc["components"]["schemas"]
    for operations in doc["paths"].values():
        for method, entry in operations.items():
            assert "500" in entry["responses"], method
            for status, answer in entry["responses"].items():
                if status.startswith("4"):
                    error = "InvalidFields" if status == "422" else "Error"
                    assert answer["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{error}"}
    patch = doc["paths"]["/api/settings"]["patch"]
    assert patch["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/SettingsPatch")
    assert {"401", "403", "415", "422", "429"} <= patch["responses"].keys()
    assert patch["security"] == [{"bearer": []}]
    upload = doc["paths"]["/api/jobs"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload
    assert "security" not in doc["paths"]["/health"]["get"]
    names = [parameter["name"] for parameter in doc["paths"]["/api/jobs"]["get"]["parameters"]]
    assert {"offset", "skip", "limit", "status"} <= set(names)
    events = [message["$ref"].rsplit("/", 1)[-1] for message in doc["x-websocket-events"]["messages"]]
    assert events == ["SettingsEvent", "StreamEvent", "JobEvent", "PresetEvent", "RecordingEvent"]
    for name in events:
        assert "ts" in schemas[name]["properties"] and "type" in schemas[name]["properties"]
    # Every $ref points at a schema the document holds.
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', str(doc).replace("'", '"')))
    assert refs <= schemas.keys()


async def test_docs_are_served_from_the_package(server: RunningServer) -> None:
    async with server.http.get(server.url("/docs")) as response:
        assert response.status == 200
        page = await response.text()
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources and all(source.startswith("/") for source in sources), sources  # nothing from elsewhere
    for source in sources:
        async with server.http.get(server.url(source)) as response:
            assert response.status == 200, source
    async with server.http.get(server.url("/docs/ui/swagger-ui-bundle.js")) as response:
        assert response.status == 200
        assert len(await response.read()) > 500_000


async def test_answers_and_events_are_checked_against_the_served_contract(server: RunningServer) -> None:
    # Every test's client (server.testing.servers) checks what it decodes with this; here it is shown to bite.
    contract = Contract(await document(server))
    settings = StyleSettings(prompt="ink", strength=0.5)
    contract.check_response("GET", "/api/settings", 200, settings.model_dump())
    with pytest.raises(ContractViolation, match="strength"):
        contract.check_response("GET", "/api/settings", 200, {**settings.model_dump(), "strength": "high"})
    with pytest.raises(ContractViolation, match="418, not declared"):
        contract.check_response("GET", "/api/settings", 418, {})
    with pytest.raises(ContractViolation, match="detail"):
        contract.check_response("PATCH", "/api/settings", 422, {"error": "invalid fields", "detail": "a string"})
    # A change made on the page is an event the contract allows (its source was missing from the schema).
    event = SettingsEvent(scope="global", source="page", changed={"prompt": "ink"}, settings=settings)
    contract.check_event(json.loads(event_message(event)))
    with pytest.raises(ContractViolation):
        contract.check_event({**json.loads(event_message(event)), "source": "telepathy"})
