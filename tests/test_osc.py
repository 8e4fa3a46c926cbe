"""OSC over real UDP datagrams from a python-osc client; settings read back over HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.udp_client import SimpleUDPClient

from server import keys
from server.config import Config, OscConfig
from server.control.osc import LOGGED_ADDRESSES, OscListener
from server.control.settings import SettingsStore, StyleSettings
from server.testing.rtc_client import connect
from server.testing.servers import RunningServer, start_server, stop_server
from server.testing.waiting import eventually


def _client(server: RunningServer) -> SimpleUDPClient:
    return SimpleUDPClient("127.0.0.1", _port(server))


def _port(server: RunningServer) -> int:
    return server.app[keys.OSC].port


async def _settings(server: RunningServer) -> dict[str, Any]:
    async with server.http.get(server.url("/api/settings")) as response:
        return dict(await response.json())


def _listener(server: RunningServer) -> OscListener:
    return server.app[keys.OSC]


async def test_osc_messages_change_global_settings(server: RunningServer) -> None:
    osc = _client(server)
    listener = _listener(server)
    osc.send_message("/stylize/prompt", "a neon fox")
    osc.send_message("/stylize/strength", 0.62)
    osc.send_message("/stylize/seed", 7)
    osc.send_message("/stylize/blend", 1)  # an int where a float is expected
    osc.send_message("/stylize/prompt_b", "a paper cat")
    osc.send_message("/stylize/pause", True)
    await eventually(lambda: listener.accepted >= 6)
    settings = await _settings(server)
    assert settings["prompt"] == "a neon fox"
    assert abs(settings["strength"] - 0.62) < 1e-6
    assert settings["seed"] == 7
    assert settings["blend"] == 1.0
    assert settings["prompt_b"] == "a paper cat"
    assert settings["paused"] is True
    osc.send_message("/stylize/pause", 0)
    await eventually(lambda: listener.accepted >= 7)
    assert (await _settings(server))["paused"] is False


async def test_bundles_are_applied(server: RunningServer) -> None:
    bundle = OscBundleBuilder(IMMEDIATELY)
    for address, value in (("/stylize/strength", 0.3), ("/stylize/prompt", "bundled")):
        message = OscMessageBuilder(address=address)
        message.add_arg(value)
        bundle.add_content(message.build())
    listener = _listener(server)
    _client(server).send(bundle.build())
    await eventually(lambda: listener.accepted >= 2)
    settings = await _settings(server)
    assert (settings["strength"], settings["prompt"]) == (0.3, "bundled")


async def test_bad_osc_input_is_dropped_counted_and_changes_nothing(server: RunningServer) -> None:
    osc = _client(server)
    listener = _listener(server)
    before = await _settings(server)
    osc.send_message("/stylize/strength", 1.5)  # out of range
    osc.send_message("/stylize/strength", "loud")  # wrong type
    osc.send_message("/stylize/strength", [0.1, 0.2])  # two arguments
    osc.send_message("/stylize/seed", -3)
    osc.send_message("/stylize/seed", 2.5)
    osc.send_message("/stylize/pause", 5)
    osc.send_message("/stylize/prompt", "x" * 501)
    osc.send_message("/stylize/volume", 0.5)  # unknown address
    osc.send_message("/other/strength", 0.5)
    osc.send_message("/stylize/stream/nope/strength", 0.5)  # unknown stream
    osc.send_message("/stylize/preset", "no-such-preset")
    osc.send_message("/stylize/preset", 3)
    osc.send_message("/stylize/preset/next", 1)  # takes no argument
    osc._sock.sendto(b"\x00garbage that is not OSC", ("127.0.0.1", _port(server)))
    osc._sock.sendto(b"", ("127.0.0.1", _port(server)))
    await eventually(lambda: listener.rejected >= 15)
    assert listener.accepted == 0
    assert await _settings(server) == before
    # Still serving, over OSC and HTTP.
    osc.send_message("/stylize/strength", 0.4)
    await eventually(lambda: listener.accepted == 1)
    assert (await _settings(server))["strength"] == 0.4


async def test_sources_off_the_allow_list_are_dropped(make_config: Callable[..., Config]) -> None:
    running = await start_server(make_config(osc={"allow": ["10.99.0.0/16"]}))
    try:
        listener = _listener(running)
        _client(running).send_message("/stylize/strength", 0.9)
        await eventually(lambda: listener.rejected == 1)
        assert (await _settings(running))["strength"] != 0.9
    finally:
        await stop_server(running)


async def test_per_stream_osc_addresses(server: RunningServer) -> None:
    client = await connect(server.http, server.url("/api/offer"))
    try:
        osc = _client(server)
        listener = _listener(server)
        osc.send_message(f"/stylize/stream/{client.stream_id}/strength", 0.2)
        osc.send_message(f"/stylize/stream/{client.stream_id}/prompt", "only this stream")
        await eventually(lambda: listener.accepted >= 2)
        async with server.http.get(server.url(f"/api/streams/{client.stream_id}/settings")) as response:
            body = await response.json()
        assert body["overrides"] == {"strength": 0.2, "prompt": "only this stream"}
        assert (await _settings(server))["prompt"] != "only this stream"
    finally:
        await client.close()


async def test_an_osc_change_reaches_an_events_listener(server: RunningServer) -> None:
    async with server.http.ws_connect(server.url("/api/events")) as ws:
        await eventually(lambda: server.app[keys.EVENTS].listeners == 1)
        _client(server).send_message("/stylize/strength", 0.77)
        message = await asyncio.wait_for(ws.receive(), 5)
        event = json.loads(message.data)
    assert event["type"] == "settings"
    assert event["source"] == "osc"
    assert event["scope"] == "global"
    assert event["changed"] == {"strength": 0.77}
    assert event["settings"]["strength"] == 0.77


async def test_osc_presets_apply_and_cycle(server: RunningServer) -> None:
    osc = _client(server)
    listener = _listener(server)
    library = server.app[keys.PRESETS]
    ordered = [preset.id for preset in await library.presets()]
    osc.send_message("/stylize/preset", ordered[1])
    await eventually(lambda: listener.accepted == 1)
    assert (await _settings(server))["preset"] == ordered[1]
    osc.send_message("/stylize/preset/next", [])
    await eventually(lambda: listener.accepted == 2)
    assert (await _settings(server))["preset"] == ordered[2]
    osc.send_message("/stylize/preset/prev", [])
    osc.send_message("/stylize/preset/prev", [])
    await eventually(lambda: listener.accepted == 4)
    settings = await _settings(server)
    assert settings["preset"] == ordered[0]
    first = await library.get(ordered[0])
    assert settings["strength"] == first.strength


def test_drops_are_logged_once_per_address_up_to_a_cap(caplog: pytest.LogCaptureFixture) -> None:
    listener = OscListener(OscConfig(), SettingsStore(StyleSettings()))
    addresses = [f"/random/{i}" for i in range(LOGGED_ADDRESSES + 50)]
    with caplog.at_level(logging.WARNING, logger="server.control.osc"):
        for address in [*addresses, *addresses]:
            listener.datagram_received(OscMessageBuilder(address).build().dgram, ("127.0.0.1", 5000))
    assert listener.rejected == 2 * len(addresses)  # every drop counted
    logged = [record.getMessage() for record in caplog.records]
    assert len(logged) == LOGGED_ADDRESSES + 1  # one line per address up to the cap, then one saying so
    assert "no longer logged" in logged[-1]
