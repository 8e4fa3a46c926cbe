"""/docs in a real browser: Swagger UI from the package renders every operation of /openapi.json."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from server.config import Config
from server.testing.servers import RunningServer, start_server, stop_server
from tests.e2e.conftest import BROWSER_TEST

pytestmark = BROWSER_TEST


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    running = await start_server(make_config(engine={"warmup": False}), ready=False)
    yield running
    await stop_server(running)


async def test_docs_render_every_operation_offline(browser: Any, server: RunningServer) -> None:
    context = await browser.new_context(offline=False)
    page = await context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    await page.goto(server.url("/docs"))
    await page.wait_for_selector(".opblock", timeout=20_000)
    async with server.http.get(server.url("/openapi.json")) as response:
        document = await response.json()
    operations = sum(len(methods) for methods in document["paths"].values())
    assert await page.locator(".opblock").count() == operations
    assert "Stylize" in await page.locator(".title").first.inner_text()
    assert all(url.startswith(server.url("")) for url in requested), requested  # nothing from elsewhere
    assert errors == []
    await context.close()
