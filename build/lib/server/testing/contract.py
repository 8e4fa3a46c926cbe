"""The contract checked where the tests read answers: every JSON body a test decodes, and every
/api/events message, is validated against the server's own /openapi.json (its status declared for
that route, its body valid against the declared schema). A drift between the code and what it
publishes fails the test that met it, naming the route."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import WSMsgType
from jsonschema import Draft202012Validator

Document = dict[str, Any]
EVENTS_PATH = "/api/events"


class ContractViolation(AssertionError):
    """An answer the published contract does not allow."""


class Contract:
    def __init__(self, document: Document) -> None:
        self.document = document
        self._routes = [
            (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"), path, operations)
            for path, operations in document["paths"].items()
        ]

    def check_response(self, method: str, path: str, status: int, body: Any) -> None:
        """`body` (decoded JSON) as an answer of `status` to `method path`; an unknown route is not ours to judge."""
        found = next(((template, ops) for pattern, template, ops in self._routes if pattern.match(path)), None)
        if found is None or method.lower() not in found[1]:
            return
        template, operations = found
        responses = operations[method.lower()]["responses"]
        declared = responses.get(str(status))
        if declared is None:
            raise ContractViolation(f"{method} {template} answered {status}, not declared (only {sorted(responses)})")
        schema = declared.get("content", {}).get("application/json", {}).get("schema")
        if schema is not None:
            self._validate(schema, body, f"{method} {template} {status}")

    def check_event(self, message: Any) -> None:
        self._validate({"oneOf": self.document["x-websocket-events"]["messages"]}, message, "/api/events message")

    def _validate(self, schema: dict[str, Any], value: Any, where: str) -> None:
        # The schemas refer to "#/components/schemas/...": the document's components travel with each.
        validator = Draft202012Validator({**schema, "components": self.document["components"]})
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            at = "/".join(str(part) for part in first.absolute_path) or "(the body)"
            raise ContractViolation(f"{where}: {at}: {first.message}")


def checked_session(document: Callable[[], Document | None]) -> aiohttp.ClientSession:
    """An HTTP client whose decoded JSON answers and event messages are checked against `document()`
    (read at each check: the server builds it at start-up; None until then, and nothing is checked)."""
    contracts: dict[int, Contract] = {}

    def contract() -> Contract | None:
        current = document()
        if current is None:
            return None
        if id(current) not in contracts:
            contracts[id(current)] = Contract(current)
        return contracts[id(current)]

    class CheckedResponse(aiohttp.ClientResponse):
        async def json(self, *args: Any, **kwargs: Any) -> Any:
            body = await super().json(*args, **kwargs)
            checker = contract()
            if checker is not None:
                checker.check_response(self.method, self.url.path, self.status, body)
            return body

    class CheckedEvents(aiohttp.ClientWebSocketResponse):
        async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage:
            message = await super().receive(timeout)
            checker = contract()
            # The upgrade's answer is the one place the socket's address is kept.
            upgrade: aiohttp.ClientResponse | None = getattr(self, "_response", None)
            events = upgrade is not None and upgrade.url.path == EVENTS_PATH
            if checker is not None and events and message.type is WSMsgType.TEXT:
                checker.check_event(json.loads(message.data))
            return message

    return aiohttp.ClientSession(response_class=CheckedResponse, ws_response_class=CheckedEvents)
