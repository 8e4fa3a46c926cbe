"""The /monitor page in headless Chromium, fed by a server with a real aiortc peer streaming."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import ConsoleMessage, Page

from server.config import Config
from server.testing.rtc_client import connect
from server.testing.servers import RunningServer, start_server, stop_server
from tests.e2e.conftest import BROWSER_TEST

pytestmark = BROWSER_TEST

# How many pixels of a chart's line colour count as "a line was drawn".
MIN_LINE_PIXELS = 50

COUNT_COLOUR = """([id, rgb]) => {
  const canvas = document.getElementById(id);
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let count = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (Math.abs(data[i] - rgb[0]) < 12 && Math.abs(data[i + 1] - rgb[1]) < 12 && Math.abs(data[i + 2] - rgb[2]) < 12) {
      count += 1;
    }
  }
  return count;
}"""


@pytest.fixture
async def quick_server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    """A server without the warm-up (the page, not the first frame, is under test)."""
    running = await start_server(make_config(engine={"warmup": False}))
    yield running
    await stop_server(running)


async def test_monitor_renders_live_numbers_and_charts(
    quick_server: RunningServer, browser: Any, tmp_path: Path
) -> None:
    server = quick_server
    client = await connect(server.http, server.url("/api/offer"))
    try:
        await client.wait_frames(10)
        page = await browser.new_page(viewport={"width": 1440, "height": 1000})
        problems = watch_for_errors(page)
        await page.goto(server.url("/monitor"))
        await check_monitor(page, client.stream_id)
        await page.screenshot(path=str(tmp_path / "monitor.png"), full_page=True)
        activity = "() => document.getElementById('activity').textContent"
        assert f"stream up {client.stream_id}" in await page.evaluate(activity)
        assert await page.locator("#job-average").inner_text() == "–", "no job done yet"
        await page.click("#reset")
        await page.wait_for_function(f"{activity}.includes('nothing since the reset')", timeout=5_000)
    finally:
        await client.close()
    assert problems == []


def watch_for_errors(page: Page) -> list[str]:
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    return problems


async def check_monitor(page: Page, stream_id: str) -> None:
    # Real numbers from /api/stats: the engine is ready, one stream, frames flowing.
    await page.wait_for_function(
        """() => document.getElementById("state").textContent === "ready"
            && document.getElementById("streams").textContent === "1"
            && parseFloat(document.getElementById("fps-out").textContent) > 0
            && parseFloat(document.getElementById("latency-p95").textContent) > 0""",
        timeout=20_000,
    )
    await page.wait_for_timeout(2_500)  # a few polls, so the charts have lines rather than dots
    row = page.locator("#streams-table tbody tr")
    assert await row.count() == 1
    assert stream_id in await row.first.inner_text()
    assert await page.locator("#model").inner_text() == "tiny (sd-turbo)"
    assert re.fullmatch(r"\d+(\.\d+)?", await page.locator("#throughput").inner_text())
    assert re.fullmatch(r"\d+%", await page.locator("#cpu").inner_text())
    assert await page.locator("#streams-empty").is_hidden()

    # Each chart drew its lines: fps in (blue) and out (orange), latency p95, batch size.
    for chart, colour in (
        ("chart-fps", (0x4F, 0xC3, 0xF7)),
        ("chart-fps", (0xFF, 0xB7, 0x4D)),
        ("chart-latency", (0xFF, 0xB7, 0x4D)),
        ("chart-batch", (0x4F, 0xC3, 0xF7)),
    ):
        assert await page.evaluate(COUNT_COLOUR, [chart, list(colour)]) >= MIN_LINE_PIXELS, chart
