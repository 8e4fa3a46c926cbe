"""/view/{name} in a real browser: the OBS browser source recipe (and a projector's full-screen player)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server.config import Config
from server.testing.rtc_client import RtcClient, whip_publish
from server.testing.servers import RunningServer, free_port, start_server, stop_server
from server.testing.waiting import eventually
from tests.e2e.conftest import BROWSER_TEST
from tests.e2e.test_page_browser import get_json, open_page

pytestmark = BROWSER_TEST

PLAYBACK = """
() => {
  const video = document.getElementById("view");
  return { frames: video.getVideoPlaybackQuality().totalVideoFrames, width: video.videoWidth,
           state: document.getElementById("view-status").dataset.state };
}
"""


async def publish(server: RunningServer) -> RtcClient:
    return await whip_publish(server.http, server.url("/api/whip/stage"), receive=False)


async def test_the_view_page_plays_a_name_and_comes_back_after_a_server_restart(
    browser: Any, make_config: Callable[..., Config]
) -> None:
    config = make_config(server={"port": free_port()}, engine={"max_batch": 1})
    running = await start_server(config)
    publisher = await publish(running)
    try:
        under_test = await open_page(browser, running, "/view/stage")
        page = under_test.page

        async def playing() -> bool:
            now = await page.evaluate(PLAYBACK)
            return bool(now["frames"] >= 5 and now["width"] == 320 and now["state"] == "playing")

        await eventually(playing, 30, interval=0.1, what="the view page to play the name")
        assert (await get_json(running, "/api/outputs"))["outputs"][1]["viewers"] == 1
        first = await page.evaluate("window.stylize.player.location")

        # The server restarts (same port, knowing nothing): the page connects again by itself (it asks for
        # its session when frames stop, rather than wait ~10 s for the browser to call the connection lost).
        await publisher.close()
        await stop_server(running)
        running = await start_server(config)
        publisher = await publish(running)

        async def back() -> bool:
            location = await page.evaluate("window.stylize.player.location")
            return bool(location and location != first and await playing())

        await eventually(back, 40, interval=0.2, what="the view page to reconnect and play again")
        # The old session's DELETE finds nothing on the new server (404); requests while it was down fail.
        unexpected = [e for e in under_test.unexpected_errors(404) if "ERR_CONNECTION_REFUSED" not in e]
        assert unexpected == []
    finally:
        await publisher.close()
        await stop_server(running)
