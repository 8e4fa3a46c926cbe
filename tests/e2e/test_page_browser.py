"""The page in a real browser: headless Debian Chromium with a fake camera, against the real server."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.engine import random_loras
from pipeline import load_model
from server.config import Config
from server.testing.clips import make_image
from server.testing.rtc_client import connect
from server.testing.servers import RunningServer, free_port, start_server, stop_server
from server.testing.waiting import eventually
from tests.e2e.conftest import BROWSER_TEST

pytestmark = BROWSER_TEST
SCREENSHOT_COPY = Path("/tmp/page-screenshot.png")


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    """The shared fixture's server with one-frame batches: one stream needs no more, and start-up is faster."""
    running = await start_server(make_config(engine={"max_batch": 1}))
    yield running
    await stop_server(running)


@dataclass
class PageUnderTest:
    page: Any  # playwright.async_api.Page
    console_errors: list[str] = field(default_factory=list)

    def unexpected_errors(self, *allowed_statuses: int) -> list[str]:
        """Console errors, less failed loads with a status the test expects."""
        unexpected = []
        for text in self.console_errors:
            if "Failed to load resource" in text and any(f"status of {status}" in text for status in allowed_statuses):
                continue
            unexpected.append(text)
        return unexpected


async def open_page(browser: Any, server: RunningServer, path: str = "/", **context_options: Any) -> PageUnderTest:
    context = await browser.new_context(**({"viewport": {"width": 1280, "height": 860}} | context_options))
    page = await context.new_page()
    under_test = PageUnderTest(page)

    def on_console(message: Any) -> None:
        if message.type == "error":
            url = message.location.get("url", "") if message.location else ""
            under_test.console_errors.append(f"{message.text} [{url}]")

    page.on("console", on_console)
    page.on("pageerror", lambda error: under_test.console_errors.append(f"page error: {error}"))
    await page.goto(server.url(path))
    await page.wait_for_function("window.stylize !== undefined")
    return under_test


async def get_json(server: RunningServer, path: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with server.http.get(server.url(path), headers=headers) as response:
        assert response.status == 200, await response.text()
        return await response.json()


OUTPUT_PLAYBACK = """
() => {
  const video = document.getElementById("output");
  return { time: video.currentTime, frames: video.getVideoPlaybackQuality().totalVideoFrames,
           width: video.videoWidth, height: video.videoHeight };
}
"""


async def test_start_plays_stylized_video_and_stop_hangs_up(
    browser: Any, server: RunningServer, tmp_path: Path
) -> None:
    under_test = await open_page(browser, server, "/?name=stage")
    page = under_test.page
    assert await page.text_content("#stream-name") == "stage"
    links = await page.locator("#output-links code").all_text_contents()
    assert server.url("/api/outputs/stage/mjpeg") in links and server.url("/view/stage") in links
    await page.select_option("#resolution", "320x240")  # the fake camera's frames, kept cheap for 2 CPU cores
    await page.click("#start")
    await page.wait_for_function("document.getElementById('status').textContent === 'connected'", timeout=20_000)

    # The stylized video plays: frames keep arriving and its clock runs.
    first = await page.evaluate(OUTPUT_PLAYBACK)

    async def advanced() -> bool:
        now = await page.evaluate(OUTPUT_PLAYBACK)
        return now["frames"] >= first["frames"] + 3 and now["time"] > first["time"]

    await eventually(advanced, 20, interval=0.1, what="three more decoded output frames")
    played = await page.evaluate(OUTPUT_PLAYBACK)
    assert (played["width"], played["height"]) == (320, 240), played

    streams = (await get_json(server, "/api/streams"))["streams"]
    assert len(streams) == 1 and streams[0]["stats"]["frames_out"] > 0
    assert streams[0]["name"] == "stage", "the page streams under the name it was opened with"

    # The readouts fill in from getStats and the server's stream stats.
    await page.wait_for_function("/^\\d+ ms$/.test(document.getElementById('latency').textContent)", timeout=10_000)
    await page.wait_for_function("/^\\d+\\.\\d$/.test(document.getElementById('fps').textContent)")
    await page.wait_for_function("/^\\d+\\.\\d\\d$/.test(document.getElementById('flicker').textContent)")
    latency = await page.text_content("#latency")
    detail = await page.text_content("#latency-detail")
    fps = await page.text_content("#fps")
    print(f"\npage readouts with the fake camera and the tiny model: latency {latency} ({detail}), fps {fps}")

    screenshot = tmp_path / "page-streaming.png"
    await page.screenshot(path=str(screenshot))
    shutil.copyfile(screenshot, SCREENSHOT_COPY)

    await page.click("#stop")

    async def no_streams() -> bool:
        return (await get_json(server, "/api/streams"))["streams"] == []

    await eventually(no_streams, 10, interval=0.1, what="the server to list no streams after Stop")
    await page.wait_for_function("document.getElementById('status').textContent === 'idle'")
    assert await page.is_disabled("#stop") and await page.is_enabled("#start")
    assert await page.evaluate("document.getElementById('output').srcObject") is None
    assert under_test.unexpected_errors() == []


async def test_page_reconnects_by_itself_after_a_server_restart(
    browser: Any, make_config: Callable[..., Config]
) -> None:
    config = make_config(server={"port": free_port()}, engine={"max_batch": 1})
    running = await start_server(config)
    try:
        under_test = await open_page(browser, running)
        page = under_test.page
        await page.select_option("#resolution", "320x240")
        await page.click("#start")
        await page.wait_for_function("document.getElementById('status').textContent === 'connected'", timeout=20_000)
        first = await page.evaluate("window.stylize.connection.streamId")

        await stop_server(running)
        running = await start_server(config)  # same port, knows nothing of the old stream

        async def streaming_again() -> bool:
            streams = (await get_json(running, "/api/streams"))["streams"]
            return len(streams) == 1 and streams[0]["id"] != first and streams[0]["stats"]["frames_out"] > 0

        await eventually(streaming_again, 30, interval=0.1, what="the page to stream to the restarted server")
        await page.wait_for_function("document.getElementById('status').textContent === 'connected'", timeout=10_000)
        assert await page.evaluate("window.stylize.connection.streamId") != first
        await page.click("#stop")
        # While the server was down the page's requests failed, and /readyz said 503 while it warmed up;
        # the old stream's settings, read when the events socket came back, were gone (404) before the
        # page learnt the stream was; nothing else may have gone wrong.
        expected = ("ERR_CONNECTION_REFUSED", "/api/events", "/readyz", f"/api/streams/{first}/settings")
        unexpected = [e for e in under_test.unexpected_errors() if not any(text in e for text in expected)]
        assert unexpected == []
    finally:
        await stop_server(running)


async def test_page_reconnects_as_soon_as_the_server_is_ready_not_at_its_back_off_step(
    browser: Any, make_config: Callable[..., Config]
) -> None:
    config = make_config(server={"port": free_port()}, engine={"max_batch": 1, "warmup": False})
    running = await start_server(config)
    try:
        under_test = await open_page(browser, running)
        page = under_test.page
        await page.select_option("#resolution", "320x240")
        await page.click("#start")
        await page.wait_for_function("document.getElementById('status').textContent === 'connected'", timeout=20_000)
        await stop_server(running)
        # A long outage's back-off: the next try would be 30 s away.
        await page.evaluate("window.stylize.connection.failures = 99")
        await page.wait_for_function(
            "document.getElementById('status').textContent === 'retrying in 30 s'", timeout=10_000
        )
        running = await start_server(config)
        await page.wait_for_function("document.getElementById('status').textContent === 'connected'", timeout=8_000)
        await page.click("#stop")
    finally:
        await stop_server(running)


async def test_a_camera_that_ends_is_shown_lost_and_taken_again(browser: Any, server: RunningServer) -> None:
    under_test = await open_page(browser, server)
    page = under_test.page
    await page.select_option("#resolution", "320x240")
    await page.click("#start")
    await page.wait_for_function("document.getElementById('status').textContent === 'connected'", timeout=20_000)
    # What a browser does when a camera is unplugged: the track stops and fires `ended`.
    # Read at once: a fake camera is back within a frame or two, and the message goes with it.
    said = await page.evaluate(
        """() => {
            const track = document.getElementById("input").srcObject.getVideoTracks()[0];
            window.lostTrack = track;
            track.stop();
            track.dispatchEvent(new Event("ended"));
            return document.getElementById("error").textContent;
        }"""
    )
    assert "camera lost" in said
    await page.wait_for_function(
        """() => {
            const track = document.getElementById("input").srcObject.getVideoTracks()[0];
            return track !== window.lostTrack && track.readyState === "live"
                && document.getElementById("error").hidden;
        }""",
        timeout=10_000,
    )
    sent = "() => window.stylize.connection.pc.getSenders().find((s) => s.track).track.readyState"
    assert await page.evaluate(sent) == "live", "the stream sends the camera taken again"
    assert await page.text_content("#status") == "connected"
    await page.click("#stop")
    assert under_test.unexpected_errors() == []


ICE_SERVERS = [{"urls": "turn:127.0.0.1:3479", "username": "artist", "credential": "s3cret"}]


@pytest.fixture
async def server_with_ice(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    running = await start_server(make_config(server={"ice_servers": ICE_SERVERS}, engine={"max_batch": 1}))
    yield running
    await stop_server(running)


async def test_controls_drive_and_follow_global_settings(browser: Any, server_with_ice: RunningServer) -> None:
    server = server_with_ice
    under_test = await open_page(browser, server)
    page = under_test.page
    # The page's RTCPeerConnection gets the configured STUN/TURN servers, credentials included.
    await page.wait_for_function("window.stylize.connection.rtcConfig.iceServers !== undefined")
    assert await page.evaluate("window.stylize.connection.rtcConfig.iceServers") == ICE_SERVERS
    start = await get_json(server, "/api/settings")
    await page.wait_for_function(f"document.getElementById('strength').value === '{start['strength']}'")

    # Moving the slider (keyboard: five steps of 0.01 up) changes the global settings.
    await page.focus("#strength")
    for _ in range(5):
        await page.keyboard.press("ArrowRight")
    expected = round(start["strength"] + 0.05, 2)

    async def strength_sent() -> bool:
        return abs((await get_json(server, "/api/settings"))["strength"] - expected) < 1e-6

    await eventually(strength_sent, 10, interval=0.1, what=f"strength {expected} in /api/settings")

    # A typed prompt goes live on Enter.
    await page.fill("#prompt", "a pencil sketch, cross hatching")
    await page.press("#prompt", "Enter")

    async def prompt_sent() -> bool:
        return (await get_json(server, "/api/settings"))["prompt"] == "a pencil sketch, cross hatching"

    await eventually(prompt_sent, 10, interval=0.1, what="the typed prompt in /api/settings")

    # A change made elsewhere over HTTP moves the page's controls (via /api/events).
    await page.click("h1")  # the user looks away from the controls
    patch = {"prompt": "ink drawing, heavy lines", "strength": 0.23, "seed": 7}
    async with server.http.patch(server.url("/api/settings"), json=patch) as response:
        assert response.status == 200
    await page.wait_for_function(
        """() => document.getElementById('prompt').value === 'ink drawing, heavy lines'
                 && document.getElementById('strength').value === '0.23'
                 && document.getElementById('strength-value').textContent === '0.23'
                 && document.getElementById('seed').value === '7'""",
        timeout=5_000,
    )

    # The dice picks a new seed and sends it.
    await page.click("#dice")

    async def seed_changed() -> bool:
        return (await get_json(server, "/api/settings"))["seed"] != 7

    await eventually(seed_changed, 10, interval=0.1, what="a new seed from the dice")
    seed = (await get_json(server, "/api/settings"))["seed"]
    assert await page.input_value("#seed") == str(seed)

    # Output only, and the stylized picture full screen for a projector.
    await page.select_option("#layout", "output")
    assert not await page.is_visible("#input") and await page.is_visible("#output")
    await page.click("#fullscreen")
    await page.wait_for_function("document.fullscreenElement && document.fullscreenElement.id === 'output-box'")
    await page.keyboard.press("f")
    await page.wait_for_function("document.fullscreenElement === null")
    assert under_test.unexpected_errors() == []


async def start_refused(page: Any) -> str:
    """Click Start on a server that will refuse; the page's error text."""
    await page.click("#start")
    await page.wait_for_selector("#error:not([hidden])", timeout=15_000)
    return str(await page.text_content("#error"))


async def test_full_server_refusal_is_shown(browser: Any, make_config: Callable[..., Config]) -> None:
    running = await start_server(make_config(server={"max_peers": 1}, engine={"max_batch": 1}))
    client = await connect(running.http, running.url("/api/offer"))
    try:
        under_test = await open_page(browser, running)
        page = under_test.page
        message = await start_refused(page)
        assert "server full" in message and "503" in message, message
        assert await page.is_visible("#error")
        await page.wait_for_function("document.getElementById('status').textContent.startsWith('retrying')")
        # Stop gives up waiting for a slot.
        await page.click("#stop")
        assert await page.text_content("#status") == "idle"
        assert under_test.unexpected_errors(503) == []
    finally:
        await client.close()
        await stop_server(running)


async def test_unauthorized_refusal_is_shown_and_a_token_in_the_address_is_used(
    browser: Any, make_config: Callable[..., Config]
) -> None:
    running = await start_server(make_config(security={"api_token": "stage-42"}, engine={"max_batch": 1}))
    try:
        under_test = await open_page(browser, running)
        page = under_test.page
        message = await start_refused(page)
        assert "unauthorized (401)" in message and "?token=" in message, message
        # Not worth retrying: the page stops, ready for another Start, and no stream was made.
        await page.wait_for_function("document.getElementById('status').textContent === 'refused'")
        assert await page.is_enabled("#start") and await page.is_disabled("#stop")
        assert (await get_json(running, "/api/streams", "stage-42"))["streams"] == []
        assert under_test.unexpected_errors(401) == []

        # Opened once as /?token=..., the page keeps the token, takes it off the address bar, sends it and streams.
        with_token = await open_page(browser, running, "/?token=stage-42&view=1#top")
        page = with_token.page
        assert page.url == running.url("/?view=1#top")
        assert await page.evaluate("localStorage.getItem('stylize-token')") == "stage-42"
        await page.wait_for_function("document.getElementById('prompt').value !== ''")  # settings read with it
        await page.select_option("#resolution", "320x240")
        await page.click("#start")
        await page.wait_for_function("document.getElementById('status').textContent === 'connected'", timeout=20_000)
        assert await page.is_hidden("#error")
        await page.click("#stop")

        async def no_streams() -> bool:
            return (await get_json(running, "/api/streams", "stage-42"))["streams"] == []

        await eventually(no_streams, 10, interval=0.1, what="the server to list no streams after Stop")
        assert with_token.unexpected_errors() == []
    finally:
        await stop_server(running)


async def test_preset_chips_apply_presets(browser: Any, server: RunningServer) -> None:
    under_test = await open_page(browser, server)
    page = under_test.page
    chip = page.locator("#preset-chips button[data-preset='oil-painting']")
    await chip.click()

    async def applied() -> bool:
        return (await get_json(server, "/api/settings"))["preset"] == "oil-painting"

    await eventually(applied, 10, interval=0.1, what="the oil-painting preset in /api/settings")
    await page.wait_for_function("document.getElementById('preset').value === 'oil-painting'")
    assert "active" in (await chip.get_attribute("class") or "")
    settings = await get_json(server, "/api/settings")
    assert await page.input_value("#prompt") == settings["prompt"]
    assert await page.input_value("#strength") == str(settings["strength"])

    # Applied elsewhere (OSC, another page), the page follows.
    async with server.http.post(server.url("/api/presets/watercolor/apply"), json={"prompt": "a cat"}) as response:
        assert response.status == 200
    await page.wait_for_function("document.getElementById('preset').value === 'watercolor'")
    assert (await page.input_value("#prompt")).startswith("a watercolor painting of a cat")
    assert "active" not in (await chip.get_attribute("class") or "")
    assert under_test.unexpected_errors() == []


async def test_jobs_panel_uploads_follows_and_deletes_a_render(browser: Any, server: RunningServer) -> None:
    under_test = await open_page(browser, server)
    page = under_test.page
    picture = {"name": "still.png", "mimeType": "image/png", "buffer": make_image("png", 96, 64)}
    await page.set_input_files("#job-file", files=[picture])
    await page.fill("#job-strength", "0.4")
    await page.select_option("#job-steps", "2")
    await page.click("#job-submit")

    link = page.locator("#job-list li a[download]")
    await link.wait_for(timeout=30_000)  # the link appears once the job's completed event arrives
    href = await link.get_attribute("href")
    assert href is not None and href.endswith("/result")
    async with server.http.get(server.url(href)) as response:
        assert response.status == 200 and response.content_type == "image/png"
    job_id = href.split("/")[3]
    job = await get_json(server, f"/api/jobs/{job_id}")
    assert (job["status"], job["params"]["strength"], job["filename"]) == ("completed", 0.4, "still.png")
    assert job["params"]["num_inference_steps"] == 2
    assert "1/1 frames" in await page.text_content(f"#job-list li[data-job='{job_id}']")
    row_style = "row => [getComputedStyle(row).borderTopStyle, getComputedStyle(row).listStyleType]"
    assert await page.eval_on_selector(f"#job-list li[data-job='{job_id}']", row_style) == ["solid", "none"]
    monitor = await page.get_attribute("#monitor-link", "href")
    async with server.http.get(server.url(monitor or "")) as response:
        assert monitor == "/monitor" and response.status == 200, "the page links the monitor"

    # An empty file is refused, and the panel says why.
    await page.set_input_files("#job-file", files=[{"name": "empty.png", "mimeType": "image/png", "buffer": b""}])
    await page.click("#job-submit")
    await page.wait_for_selector("#job-error:not([hidden])")
    assert "422" in await page.text_content("#job-error")

    await page.locator(f"#job-list li[data-job='{job_id}'] button", has_text="delete").click()
    await page.wait_for_selector(f"#job-list li[data-job='{job_id}']", state="detached")
    async with server.http.get(server.url(f"/api/jobs/{job_id}")) as response:
        assert response.status == 404
    assert under_test.unexpected_errors(422) == []


async def test_the_page_fits_a_phone(browser: Any, server: RunningServer) -> None:
    under_test = await open_page(
        browser, server, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, device_scale_factor=3
    )
    page = under_test.page
    await page.select_option("#resolution", "320x240")
    await page.tap("#start")
    await page.wait_for_function("document.getElementById('status').textContent === 'connected'", timeout=20_000)
    layout = await page.evaluate(
        """() => {
          const box = (id) => document.getElementById(id).getBoundingClientRect();
          return { overflow: document.documentElement.scrollWidth - window.innerWidth,
                   output: box("output-box"), input: box("input-box"), start: box("start") };
        }"""
    )
    assert layout["overflow"] <= 0, layout  # nothing wider than the screen
    assert layout["output"]["top"] < layout["input"]["top"], layout  # one column, the stylized picture first
    assert layout["output"]["width"] > 300, layout
    assert layout["start"]["height"] >= 32, layout  # big enough to tap
    await page.tap("#stop")
    await page.wait_for_function("document.getElementById('status').textContent === 'idle'")
    assert under_test.unexpected_errors() == []


async def test_the_stylized_only_view_fits_a_laptop_screen(browser: Any, server: RunningServer) -> None:
    under_test = await open_page(browser, server, viewport={"width": 1366, "height": 900})
    page = under_test.page
    await page.select_option("#layout", "output")
    # Something above the picture grows afterwards (an error line): the picture makes room.
    await page.evaluate("() => { const e = document.getElementById('error'); e.textContent = 'x'; e.hidden = false; }")
    await page.wait_for_timeout(100)
    box = await page.evaluate(
        """() => {
          const video = document.getElementById("output").getBoundingClientRect();
          const caption = document.querySelector("#output-box figcaption");
          return { top: video.top, bottom: video.bottom, height: video.height, width: video.width,
                   caption: caption ? caption.getBoundingClientRect().bottom : 0,
                   scroll: document.documentElement.scrollTop, inner: window.innerHeight };
        }"""
    )
    assert box["bottom"] <= box["inner"] and box["caption"] <= box["inner"], box  # the whole picture on screen
    assert box["height"] >= 480, box  # and still big
    assert under_test.unexpected_errors() == []


async def test_a_pause_of_the_pages_name_is_shown_and_lifted_there_alone(browser: Any, server: RunningServer) -> None:
    under_test = await open_page(browser, server, "/?name=stage")
    page = under_test.page
    async with server.http.patch(server.url("/api/outputs/stage/settings"), json={"paused": True}) as response:
        assert response.status == 200
    await page.wait_for_selector("#scoped-paused:not([hidden])", timeout=5_000)
    assert await page.text_content("#scoped-paused") == "paused for stage"
    assert await page.is_hidden("#paused"), "the global settings are not paused"
    assert await page.text_content("#pause") == "Pause"
    await page.click("#scoped-resume")
    await page.wait_for_selector("#scoped-paused", state="hidden", timeout=5_000)
    named = await get_json(server, "/api/outputs/stage/settings")
    assert "paused" not in named["overrides"] and named["settings"]["paused"] is False
    assert (await get_json(server, "/api/settings"))["paused"] is False, "nobody else was paused or resumed"
    assert under_test.unexpected_errors() == []


async def test_a_pause_of_the_pages_own_stream_is_shown_and_lifted_there_alone(
    browser: Any, server: RunningServer
) -> None:
    under_test = await open_page(browser, server, "/?name=stage")
    page = under_test.page
    await page.select_option("#resolution", "320x240")
    await page.click("#start")
    await page.wait_for_function("document.getElementById('status').textContent === 'connected'", timeout=20_000)
    stream_id = await page.evaluate("window.stylize.connection.streamId")
    path = f"/api/streams/{stream_id}/settings"
    async with server.http.patch(server.url(path), json={"paused": True}) as response:
        assert response.status == 200
    await page.wait_for_selector("#stream-paused:not([hidden])", timeout=5_000)
    assert await page.text_content("#stream-paused") == "paused for this stream"
    assert await page.is_hidden("#paused") and await page.is_hidden("#scoped-paused")
    await page.click("#stream-resume")
    await page.wait_for_selector("#stream-paused", state="hidden", timeout=5_000)
    own = await get_json(server, path)
    assert "paused" not in own["overrides"] and own["settings"]["paused"] is False
    assert (await get_json(server, "/api/settings"))["paused"] is False, "nobody else was paused or resumed"
    await page.click("#stop")
    await page.wait_for_function("document.getElementById('status').textContent === 'idle'")
    assert under_test.unexpected_errors() == []


async def test_the_names_overrides_are_shown_edited_and_cleared_on_its_page(
    browser: Any, server: RunningServer
) -> None:
    async with server.http.patch(server.url("/api/outputs/stage/settings"), json={"prompt": "saved neon"}) as response:
        assert response.status == 200
    under_test = await open_page(browser, server, "/?name=stage")
    page = under_test.page
    # The saved prompt wins over the typed (global) one: the page says so and lists it.
    await page.wait_for_selector("#name-prompt-note:not([hidden])", timeout=5_000)
    assert "saved neon" in await page.text_content("#name-prompt-note")
    row = page.locator('#override-list li[data-field="prompt"]')
    assert await row.locator("input").input_value() == "saved neon"

    await row.locator("input").fill("edited chalk")
    await row.locator("button", has_text="Save").click()
    await eventually(
        lambda: _name_override(server, "prompt", "edited chalk"), 5, interval=0.1, what="the edited prompt saved"
    )
    await page.wait_for_function("document.getElementById('name-prompt-note').textContent.includes('edited chalk')")

    # One more field for this name only, from the add row; a bad value is refused with the server's words.
    await page.select_option("#override-field", "strength")
    await page.fill("#override-value", "7")
    await page.click("#override-add")
    await page.wait_for_selector("#error:not([hidden])", timeout=5_000)
    assert "strength" in await page.text_content("#error")
    await page.fill("#override-value", "0.8")
    await page.click("#override-add")
    await eventually(lambda: _name_override(server, "strength", 0.8), 5, interval=0.1, what="the added strength")
    await page.wait_for_selector('#override-list li[data-field="strength"]', timeout=5_000)
    assert await page.is_hidden("#error")

    # A change made elsewhere (OSC, a script) shows up here; Clear drops the override.
    async with server.http.patch(server.url("/api/outputs/stage/settings"), json={"prompt": "from a script"}) as r:
        assert r.status == 200
    await page.wait_for_function(
        """() => document.querySelector('#override-list li[data-field="prompt"] input').value === 'from a script'"""
    )
    await row.locator("button", has_text="Clear").click()
    await page.wait_for_selector("#name-prompt-note", state="hidden", timeout=5_000)
    named = await get_json(server, "/api/outputs/stage/settings")
    assert named["overrides"] == {"strength": 0.8}
    assert (await get_json(server, "/api/settings"))["strength"] != 0.8, "the global settings are untouched"
    assert under_test.unexpected_errors(422) == []


async def _name_override(server: RunningServer, field: str, value: Any) -> bool:
    return (await get_json(server, "/api/outputs/stage/settings"))["overrides"].get(field) == value


async def test_the_temporal_controls_set_feedback_and_a_flicker_target_and_show_the_controller(
    browser: Any, server: RunningServer
) -> None:
    under_test = await open_page(browser, server, "/?name=stage")
    page = under_test.page
    await page.wait_for_function("document.getElementById('feedback').value === '0'")
    await page.focus("#feedback")
    for _ in range(3):
        await page.keyboard.press("ArrowRight")
    await page.fill("#flicker-target", "1.5")
    await page.press("#flicker-target", "Enter")
    await page.select_option("#past-frames", "2")

    async def sent() -> bool:
        temporal = (await get_json(server, "/api/settings"))["temporal"]
        return bool(temporal == {"feedback": 0.03, "frames": 2, "target": 1.5})

    await eventually(sent, 10, interval=0.1, what="feedback 0.03, 2 past frames and target 1.5 in /api/settings")
    # Streaming, the header says what the controller is doing; a change over HTTP moves the controls.
    await page.select_option("#resolution", "320x240")
    await page.click("#start")
    await page.wait_for_function(
        "/^(holding|raising|lowering|below target|at most feedback), feedback \\d\\.\\d\\d$/"
        ".test(document.getElementById('flicker-state').textContent)",
        timeout=20_000,
    )
    await page.click("h1")
    async with server.http.patch(server.url("/api/settings"), json={"temporal": {"feedback": 0.4}}) as response:
        assert response.status == 200
    await page.wait_for_function(
        """() => document.getElementById('feedback').value === '0.4'
                 && document.getElementById('feedback-value').textContent === '0.40'
                 && document.getElementById('past-frames').value === '0'
                 && document.getElementById('flicker-target').value === ''""",
        timeout=5_000,
    )
    await page.click("#stop")
    await page.wait_for_function("document.getElementById('status').textContent === 'idle'")
    assert under_test.unexpected_errors() == []


async def test_the_page_names_the_model_and_its_family_and_sets_steps(browser: Any, server: RunningServer) -> None:
    under_test = await open_page(browser, server)
    page = under_test.page
    await page.wait_for_function("document.getElementById('model-name').textContent === 'tiny (sd-turbo)'")
    assert await page.is_hidden("#control-group")  # no ControlNet loaded: no structure control offered
    assert await page.input_value("#steps") == ""  # the family's default
    await page.select_option("#steps", "3")
    await eventually(lambda: _steps_are(server, 3), 5, what="the page's steps in the global settings")
    # A change made elsewhere (HTTP here, OSC alike) moves the select once the page's hold on a control
    # the user just touched (HOLD_MS in controls.js, 1.2 s) is over; null is the default again.
    await page.wait_for_timeout(1500)
    async with server.http.patch(server.url("/api/settings"), json={"num_inference_steps": None}) as response:
        assert response.status == 200
    await page.wait_for_function("document.getElementById('steps').value === ''", timeout=5_000)
    assert under_test.unexpected_errors() == []


async def _steps_are(server: RunningServer, steps: int) -> bool:
    return bool((await get_json(server, "/api/settings"))["num_inference_steps"] == steps)


async def test_the_record_button_records_the_pages_name_and_follows_a_recording_started_elsewhere(
    browser: Any, server: RunningServer
) -> None:
    under_test = await open_page(browser, server, "/?name=stage")
    page = under_test.page
    await page.wait_for_function("document.getElementById('record').textContent === 'Record'")
    await page.click("#record")
    await page.wait_for_function("document.getElementById('record').textContent === 'Stop recording'")
    [recording] = (await get_json(server, "/api/recordings"))["recordings"]
    assert recording["name"] == "stage" and recording["state"] in ("waiting", "recording")
    await page.click("#record")
    await page.wait_for_function("document.getElementById('record').textContent === 'Record'")
    assert (await get_json(server, f"/api/recordings/{recording['id']}"))["state"] not in ("waiting", "recording")

    # Started over HTTP for this name (as OSC or another page would), the button follows it; another
    # name's recording leaves it alone.
    async with server.http.post(server.url("/api/outputs/floor/recordings")) as response:
        assert response.status == 201
    async with server.http.post(server.url("/api/outputs/stage/recordings")) as response:
        assert response.status == 201
        started = await response.json()
    await page.wait_for_function("document.getElementById('record').getAttribute('aria-pressed') === 'true'")
    async with server.http.post(server.url(f"/api/recordings/{started['id']}/stop")) as response:
        assert response.status == 200
    await page.wait_for_function("document.getElementById('record').textContent === 'Record'")
    assert under_test.unexpected_errors() == []


async def test_the_structure_control_sets_the_controlnet_kind_and_scale_and_follows_changes(
    browser: Any, make_config: Callable[..., Config]
) -> None:
    running = await start_server(make_config(engine={"max_batch": 1}, control={"models": ["canny=tiny"]}))
    try:
        under_test = await open_page(browser, running)
        page = under_test.page
        await page.wait_for_selector("#control-group", state="visible", timeout=10_000)
        # Only the kinds the server loaded are offered.
        assert await page.eval_on_selector("#control-kind option[value=depth]", "o => o.disabled")
        await page.focus("#control-scale")
        for _ in range(4):
            await page.keyboard.press("ArrowRight")

        async def sent() -> bool:
            return bool((await get_json(running, "/api/settings"))["control"] == {"kind": "canny", "scale": 0.2})

        await eventually(sent, 10, interval=0.1, what="canny at 0.2 in /api/settings")
        await page.click("h1")
        await page.wait_for_timeout(1500)  # the page's hold on a control the user just touched
        async with running.http.patch(
            running.url("/api/settings"), json={"control": {"kind": "canny", "scale": 1.5}}
        ) as response:
            assert response.status == 200
        await page.wait_for_function(
            """() => document.getElementById('control-scale').value === '1.5'
                     && document.getElementById('control-scale-value').textContent === '1.50'""",
            timeout=5_000,
        )
        assert under_test.unexpected_errors() == []
    finally:
        await stop_server(running)


async def test_presets_show_their_loras_and_one_that_cannot_be_applied_here_is_disabled(
    browser: Any, make_config: Callable[..., Config], model_cache: Path, tmp_path: Path
) -> None:
    tiny = load_model("tiny", data_dir=model_cache.parent, device=torch.device("cpu"))
    [lora] = random_loras(tiny, 1, 4, tmp_path, up=0.5)
    running = await start_server(make_config(engine={"max_batch": 1}, lora={"dir": str(tmp_path)}))
    try:
        look = {"category": "custom", "template": "an ink drawing of {prompt}"}
        for preset_id, name in (("ink-look", Path(lora).name), ("gone-look", "gone.safetensors")):
            body = {**look, "id": preset_id, "name": preset_id, "loras": [{"id": name, "scale": 0.7}]}
            async with running.http.post(running.url("/api/presets"), json=body) as response:
                assert response.status == 201
        under_test = await open_page(browser, running)
        page = under_test.page
        gone = page.locator("#preset-chips .chip[data-preset=gone-look]")
        await gone.wait_for()
        assert await gone.is_disabled()
        assert "unavailable here: no 'gone.safetensors' in the LoRA folder" in (await gone.get_attribute("title") or "")
        assert "LoRAs: lora-0.safetensors 0.70" in (await page.get_attribute("[data-preset=ink-look]", "title") or "")
        assert await page.is_hidden("#loras-worn")  # the look wears none yet
        await page.click("#preset-chips .chip[data-preset=ink-look]")
        await page.wait_for_function(
            "document.getElementById('loras-worn').textContent === 'LoRAs: lora-0.safetensors 0.70'", timeout=5_000
        )
        assert (await get_json(running, "/api/settings"))["loras"] == [{"id": "lora-0.safetensors", "scale": 0.7}]
        assert under_test.unexpected_errors() == []
    finally:
        await stop_server(running)
