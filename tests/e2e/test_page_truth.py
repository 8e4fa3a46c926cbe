"""The page tells the truth: the server's state before Start, who paused the look, a prompt that goes
live only when committed, a server that went away, and a phone that sees the picture first."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from server.config import Config
from server.testing.servers import RunningServer, free_port, start_server, stop_server
from server.testing.waiting import eventually
from tests.e2e.conftest import BROWSER_TEST

pytestmark = BROWSER_TEST


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    running = await start_server(make_config(engine={"max_batch": 1, "warmup": False}))
    yield running
    await stop_server(running)


async def open_page(browser: Any, server: RunningServer, **context_options: Any) -> Any:
    context = await browser.new_context(**({"viewport": {"width": 1280, "height": 860}} | context_options))
    page = await context.new_page()
    await page.goto(server.url("/"))
    await page.wait_for_function("window.stylize !== undefined")
    return page


async def settings(server: RunningServer) -> dict[str, Any]:
    async with server.http.get(server.url("/api/settings")) as response:
        result: dict[str, Any] = await response.json()
        return result


async def test_a_failed_model_shows_before_start_with_start_disabled(
    browser: Any, make_config: Callable[..., Config], tmp_path: Path
) -> None:
    running = await start_server(make_config(model={"id": str(tmp_path / "no-such-model")}), ready=False)
    try:
        page = await open_page(browser, running)
        await page.wait_for_function("document.getElementById('server-state').textContent === 'model failed'")
        assert await page.is_disabled("#start")
        error = await page.text_content("#error")
        assert "the model failed to load" in error and "no such folder" in error, error
        # A Start that got past the button anyway (the page had not heard yet) is refused for good:
        # no retrying, and the camera is let go.
        refused = await page.evaluate(
            """async () => {
              const camera = await navigator.mediaDevices.getUserMedia({ video: true });
              await window.stylize.connection.start(camera);
              return { status: document.getElementById("status").textContent,
                       wanted: window.stylize.connection.active,
                       error: document.getElementById("error").textContent };
            }"""
        )
        assert refused["status"] == "refused" and refused["wanted"] is False, refused
        assert "model not ready" in refused["error"] and "503" in refused["error"], refused
    finally:
        await stop_server(running)


async def test_the_paused_badge_says_who_paused_and_the_toggle_resumes(browser: Any, server: RunningServer) -> None:
    page = await open_page(browser, server)
    assert await page.is_hidden("#paused")
    async with server.http.patch(server.url("/api/settings"), json={"paused": True}) as response:
        assert response.status == 200
    await page.wait_for_function("document.getElementById('paused').textContent === 'paused (by http)'")
    assert await page.text_content("#pause") == "Resume"
    await page.click("#pause")
    await page.wait_for_function("document.getElementById('paused').hidden")
    assert (await settings(server))["paused"] is False
    await page.click("#pause")
    await page.wait_for_function("document.getElementById('paused').textContent === 'paused (by page)'")
    assert (await settings(server))["paused"] is True


async def test_the_prompt_goes_live_on_enter_and_presets_keep_the_typed_subject(
    browser: Any, server: RunningServer
) -> None:
    page = await open_page(browser, server)
    before = (await settings(server))["prompt"]
    await page.click("#preset-chips [data-preset='watercolor']")
    await eventually(lambda: _preset_is(server, "watercolor"), what="the watercolor preset applied")
    await page.fill("#prompt", "")
    await page.type("#prompt", "a red fox")
    assert (await settings(server))["prompt"] != "a red fox"  # nothing sent while typing
    await page.press("#prompt", "Enter")

    async def typed() -> bool:
        current = await settings(server)
        return current["prompt"] == "a red fox" and current["preset"] is None and current["negative_prompt"] == ""

    await eventually(typed, what="the typed prompt, with the preset cleared")
    assert before != "a red fox"
    for preset in ("oil-painting", "anime"):
        await page.click(f"#preset-chips [data-preset='{preset}']")
        await eventually(lambda preset=preset: _preset_is(server, preset), what=f"the {preset} preset applied")
        assert "a red fox" in (await settings(server))["prompt"]


async def _preset_is(server: RunningServer, preset: str) -> bool:
    return (await settings(server))["preset"] == preset


async def test_a_server_that_goes_away_is_shown_at_once(browser: Any, make_config: Callable[..., Config]) -> None:
    running = await start_server(make_config(server={"port": free_port()}, engine={"warmup": False}))
    try:
        page = await open_page(browser, running)
        await page.wait_for_function("document.getElementById('server-state').hidden")
    finally:
        await stop_server(running)
    await page.wait_for_function(
        "document.getElementById('server-state').textContent === 'server unreachable'", timeout=5_000
    )


async def test_a_phone_sees_the_stylized_picture_without_scrolling(browser: Any, server: RunningServer) -> None:
    page = await open_page(
        browser, server, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, device_scale_factor=3
    )
    layout = await page.evaluate(
        """() => {
          const box = (id) => document.getElementById(id).getBoundingClientRect();
          const chips = document.getElementById("preset-chips");
          return { output: box("output-box"), prompt: box("prompt"), input: box("input-box"),
                   chipsHeight: chips.getBoundingClientRect().height,
                   chipsScroll: chips.scrollWidth - chips.clientWidth,
                   overflow: document.documentElement.scrollWidth - window.innerWidth };
        }"""
    )
    assert layout["output"]["top"] >= 0 and layout["output"]["bottom"] <= 844, layout  # on screen, no scrolling
    assert layout["output"]["width"] > 300, layout
    assert layout["prompt"]["top"] > layout["output"]["bottom"], layout  # the controls below the picture
    assert layout["chipsScroll"] > 0 and layout["chipsHeight"] < 60, layout  # one row that scrolls sideways
    assert layout["overflow"] <= 0, layout
