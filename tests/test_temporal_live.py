"""Temporal memory on a running server: the `temporal` setting over HTTP and OSC (its bad values
refused or dropped), and with a real aiortc peer, the controller holding the stream's flicker figure
at a target, as the server reports it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pythonosc.udp_client import SimpleUDPClient

from server import keys
from server.config import Config
from server.control import keys as control_keys
from server.testing.rtc_client import connect
from server.testing.servers import RunningServer, start_server, stop_server
from server.testing.waiting import eventually


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    running = await start_server(make_config(engine={"max_batch": 1}, osc={"enabled": True}))
    yield running
    await stop_server(running)


async def test_temporal_is_a_setting_over_http_and_osc_with_bad_values_refused(server: RunningServer) -> None:
    status, settings = await server.call("PATCH", "/api/settings", {"temporal": {"feedback": 0.4, "target": 2.5}})
    assert status == 200 and settings["temporal"] == {"feedback": 0.4, "frames": 0, "target": 2.5}
    for bad, field in (
        ({"feedback": 1.5}, "temporal.feedback"),
        ({"target": 0}, "temporal.target"),
        ({"frames": 5}, "temporal.frames"),
        ({"frames": 1.5}, "temporal.frames"),
        ({"layers": 2}, "temporal.layers"),
        ("on", "temporal"),
    ):
        status, body = await server.call("PATCH", "/api/settings", {"temporal": bad})
        assert status == 422 and body["detail"][0]["field"] == field, (bad, body)
    status, named = await server.call("PATCH", "/api/outputs/stage/settings", {"temporal": {"feedback": 0.2}})
    assert status == 200 and named["settings"]["temporal"] == {"feedback": 0.2, "frames": 0, "target": None}

    osc = server.app[control_keys.OSC]
    client = SimpleUDPClient("127.0.0.1", osc.port)
    client.send_message("/stylize/temporal/feedback", 0.6)  # one field: the target is kept
    await eventually(lambda: _temporal(server) == {"feedback": 0.6, "frames": 0, "target": 2.5}, 5, what="OSC feedback")
    client.send_message("/stylize/temporal/frames", 2)
    await eventually(lambda: _temporal(server)["frames"] == 2, 5, what="OSC frames")
    client.send_message("/stylize/temporal/target", 0.0)  # 0: no target
    await eventually(lambda: _temporal(server) == {"feedback": 0.6, "frames": 2, "target": None}, 5, what="OSC target")
    client.send_message("/stylize/name/stage/temporal/target", 3)
    dropped = osc.rejected
    client.send_message("/stylize/temporal/feedback", 1.5)
    client.send_message("/stylize/temporal/target", "high")
    client.send_message("/stylize/temporal/frames", 7)
    await eventually(lambda: osc.rejected >= dropped + 3, 5, what="three counted drops")
    assert _temporal(server) == {"feedback": 0.6, "frames": 2, "target": None}
    status, named = await server.call("GET", "/api/outputs/stage/settings")
    assert named["settings"]["temporal"] == {"feedback": 0.2, "frames": 0, "target": 3.0}


def _temporal(server: RunningServer) -> dict[str, Any]:
    return dict(server.app[keys.SETTINGS].global_settings.temporal.model_dump())


async def test_the_controller_brings_a_streams_flicker_to_its_target_and_holds_it(server: RunningServer) -> None:
    client = await connect(server.http, server.url("/api/offer"), size=(64, 64))
    try:
        await client.wait_frames(30)
        free = await _figure(server, client.stream_id)
        target = free * 0.6
        status, _ = await server.call(
            "PATCH", f"/api/streams/{client.stream_id}/settings", {"temporal": {"feedback": 0.0, "target": target}}
        )
        assert status == 200
        readings = []
        for _ in range(10):
            await asyncio.sleep(0.4)
            readings.append(await _stats(server, client.stream_id))
        print(
            f"\nflicker free {free:.2f}, target {target:.2f}:",
            [(round(r["flicker"], 2), r["temporal"]) for r in readings],
        )
        held = [r["flicker"] for r in readings[-4:]]
        assert all(abs(figure - target) < target * 0.3 for figure in held), (target, held)
        assert readings[-1]["temporal"]["target"] == pytest.approx(target) and readings[-1]["temporal"]["feedback"] > 0
        assert any(r["temporal"]["state"] == "holding" for r in readings[-4:])
    finally:
        await client.close()


async def _stats(server: RunningServer, stream_id: str) -> dict[str, Any]:
    status, body = await server.call("GET", "/api/streams")
    assert status == 200
    return next(s["stats"] for s in body["streams"] if s["id"] == stream_id)


async def _figure(server: RunningServer, stream_id: str) -> float:
    return float((await _stats(server, stream_id))["flicker"])
