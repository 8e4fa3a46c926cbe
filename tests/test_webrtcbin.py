"""A second WebRTC stack: GStreamer's webrtcbin (Debian's packages, an RSA DTLS certificate) publishes
over WHIP and plays over WHEP against the real server. It needs the server to be the DTLS server:
as a client aiortc offers only ECDSA suites, which an RSA peer cannot take."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import server.testing
from server.config import Config
from server.live import keys as live_keys
from server.testing.servers import RunningServer, start_server, stop_server
from server.testing.waiting import eventually

# Server processes of its own: run alone, after the rest (`make test`).
pytestmark = pytest.mark.heavy

SYSTEM_PYTHON = "/usr/bin/python3"  # where Debian's python3-gst-1.0 is importable
# Run, not imported: it needs Debian's python3-gst-1.0, which the project's virtualenv does not see.
CLIENT = Path(server.testing.__file__).parent / "gst_webrtc_client.py"


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    running = await start_server(make_config(engine={"max_batch": 2}, defaults={"strength": 0.0}))
    yield running
    await stop_server(running)


async def gstreamer(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON, str(CLIENT), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def events(process: asyncio.subprocess.Process) -> list[dict[str, Any]]:
    """Everything the client said, once it has ended (its stderr in the failure message otherwise)."""
    out, err = await asyncio.wait_for(process.communicate(), 60)
    said = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert process.returncode == 0, f"GStreamer client failed: {said} {err.decode()[-2000:]}"
    return said


def test_gstreamer_webrtc_is_installed() -> None:
    """Not skipped when missing: make system-deps installs it."""
    probe = "import gi; gi.require_version('GstWebRTC', '1.0'); from gi.repository import GstWebRTC"
    done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"python3-gst-1.0 and webrtcbin are missing (make system-deps): {done.stderr}"


async def test_webrtcbin_publishes_over_whip_and_plays_over_whep(server: RunningServer) -> None:
    peers = server.app[live_keys.PEERS]
    publisher = await gstreamer("whip", server.url("/api/whip/gst"), "--seconds", "6")
    try:
        session = await eventually(lambda: next(iter(peers.sessions.values()), None), 20, what="the WHIP session")
        await eventually(lambda: session.stats.frames_out >= 10, 20, what="webrtcbin's frames to be stylized")
        player = await gstreamer("whep", server.url("/api/outputs/gst/whep"), "--frames", "20")
        played = await events(player)
    finally:
        published = await events(publisher)
    for said in (published, played):
        answered = next(event for event in said if event["event"] == "answered")
        assert answered["status"] == 201 and answered["setup"] == ["a=setup:passive"], said
        assert any(event["event"] == "connected" for event in said), said
    assert played[-1] == {"event": "done", "frames": 20}
    await eventually(lambda: not peers.sessions and not server.app[live_keys.VIEWERS].viewers, what="both hung up")
