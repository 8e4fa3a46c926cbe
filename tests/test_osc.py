"""OSC over real UDP datagrams from a python-osc client; settings read back over HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.udp_client import SimpleUDPClient

from server import keys
from server.config import Config, OscConfig
from server.control import keys as control_keys
from server.control.osc import LOGGED_ADDRESSES, OscListener
from server.control.osc_datagram import MAX_DATAGRAM_BYTES, MAX_DEPTH, MAX_MESSAGES
from server.control.settings import SettingsStore, StyleSettings
from server.testing.rtc_client import connect
from server.testing.servers import RunningServer, start_server, stop_server
from server.testing.waiting import eventually


def _client(server: RunningServer) -> SimpleUDPClient:
    return SimpleUDPClient("127.0.0.1", _port(server))


def _port(server: RunningServer) -> int:
    return server.app[control_keys.OSC].port


async def _settings(server: RunningServer) -> dict[str, Any]:
    async with server.http.get(server.url("/api/settings")) as response:
        return dict(await response.json())


def _listener(server: RunningServer) -> OscListener:
    return server.app[control_keys.OSC]


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


async def test_osc_sets_the_number_of_steps_and_drops_out_of_range(server: RunningServer) -> None:
    osc = _client(server)
    listener = _listener(server)
    assert (await _settings(server))["num_inference_steps"] is None  # the model family's default
    osc.send_message("/stylize/num_inference_steps", 3)
    await eventually(lambda: listener.accepted >= 1)
    assert (await _settings(server))["num_inference_steps"] == 3
    osc.send_message("/stylize/num_inference_steps", 2.0)  # a fader's float that is a whole number
    await eventually(lambda: listener.accepted >= 2)
    assert (await _settings(server))["num_inference_steps"] == 2
    for bad in (0, 5, 2.5, "four"):
        osc.send_message("/stylize/num_inference_steps", bad)
    await eventually(lambda: listener.rejected >= 4)
    assert (await _settings(server))["num_inference_steps"] == 2


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
    osc.send_message("/stylize/prompt", "a fox\n2026-01-01 INFO forged: line")  # a control character
    osc.send_message("/stylize/volume", 0.5)  # unknown address
    osc.send_message("/other/strength", 0.5)
    osc.send_message("/stylize/stream/nope/strength", 0.5)  # unknown stream
    osc.send_message("/stylize/preset", "no-such-preset")
    osc.send_message("/stylize/preset", 3)
    osc.send_message("/stylize/preset/next", "go")  # a button sends a number
    osc.send_message("/stylize/preset/next", 0.5)  # a button is 1 or 0
    osc.send_message("/stylize/pause", 0.5)
    osc._sock.sendto(b"\x00garbage that is not OSC", ("127.0.0.1", _port(server)))
    osc._sock.sendto(b"", ("127.0.0.1", _port(server)))
    await eventually(lambda: listener.rejected >= 18)
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
    library = server.app[control_keys.PRESETS]
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


async def test_buttons_step_presets_on_press_only_and_toggles_pause_with_floats(server: RunningServer) -> None:
    """TouchOSC and Resolume buttons send 1.0 on press and 0.0 on release; toggles send 1.0 and 0.0."""
    osc = _client(server)
    listener = _listener(server)
    ordered = [preset.id for preset in await server.app[control_keys.PRESETS].presets()]
    osc.send_message("/stylize/preset", ordered[0])
    await eventually(lambda: listener.accepted == 1)
    for press, release in ((1.0, 0.0), (1, 0), (True, False)):
        osc.send_message("/stylize/preset/next", press)
        osc.send_message("/stylize/preset/next", release)
    await eventually(lambda: listener.accepted == 7)
    assert (await _settings(server))["preset"] == ordered[3], "three presses, three steps; releases step nothing"
    osc.send_message("/stylize/preset/prev", 1.0)
    osc.send_message("/stylize/preset/prev", 0.0)
    await eventually(lambda: listener.accepted == 9)
    assert (await _settings(server))["preset"] == ordered[2]

    for accepted, (value, paused) in enumerate(((1.0, True), (0.0, False), (1, True), (0, False)), start=10):
        osc.send_message("/stylize/pause", value)
        await eventually(lambda: listener.accepted == accepted)  # noqa: B023 (awaited in this iteration)
        assert (await _settings(server))["paused"] is paused, value
    assert listener.rejected == 0


async def test_an_osc_prompt_is_the_subject_of_the_next_preset_step(server: RunningServer) -> None:
    """As on the page: a prompt sent by a controller clears the preset; stepping fills the slot with it."""
    osc = _client(server)
    listener = _listener(server)
    library = server.app[control_keys.PRESETS]
    ordered = [preset.id for preset in await library.presets()]
    osc.send_message("/stylize/preset", ordered[0])
    osc.send_message("/stylize/prompt", "a lighthouse at night")
    await eventually(lambda: listener.accepted == 2)
    typed = await _settings(server)
    assert typed["prompt"] == "a lighthouse at night" and typed["preset"] is None and typed["negative_prompt"] == ""
    osc.send_message("/stylize/preset/next", 1.0)
    await eventually(lambda: listener.accepted == 3)
    stepped = await _settings(server)
    first = await library.get(ordered[0])
    assert stepped["preset"] == ordered[0], "no preset now: next is the first"
    assert stepped["prompt"] == first.fill("a lighthouse at night")
    osc.send_message("/stylize/preset/next", 1.0)
    await eventually(lambda: listener.accepted == 4)
    second = await library.get(ordered[1])
    assert (await _settings(server))["prompt"] == second.fill("a lighthouse at night"), "the subject carries on"


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


# -- hostile datagrams --------------------------------------------------------------------------


def _message(address: str, *args: Any) -> bytes:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)
    return bytes(builder.build().dgram)


def _bundle(*elements: bytes) -> bytes:
    return b"#bundle\x00" + bytes(8) + b"".join(struct.pack(">i", len(e)) + e for e in elements)


def _nested(depth: int) -> bytes:
    datagram = _message("/stylize/strength", 0.5)
    for _ in range(depth):
        datagram = _bundle(datagram)
    return datagram


# 48 bytes: a bundle whose first element claims a size of -4, then a well-formed element.
# python-osc's parser stepped back 4 bytes for every element read: it looped forever on the event loop.
NEGATIVE_SIZE = b"#bundle\x00" + bytes(8) + struct.pack(">i", -4) + struct.pack(">i", 24) + _message("/stylize/seed", 1)
NIL_ARGUMENT = b"/stylize/strength\x00\x00\x00,N\x00\x00"

HOSTILE = {
    "negative element size": (NEGATIVE_SIZE, "malformed"),
    "600 nested bundles": (_nested(600), "depth"),
    "nil argument": (NIL_ARGUMENT, "value"),
    "element size past the end": (b"#bundle\x00" + bytes(8) + struct.pack(">i", 4096) + bytes(8), "malformed"),
    "element size not a multiple of 4": (
        _bundle(_message("/stylize/seed", 1))[:16] + struct.pack(">i", 3) + b"/ab",
        "malformed",
    ),
    "bundle cut inside its header": (b"#bundle\x00" + bytes(4), "malformed"),
    "empty bundle": (_bundle(), "malformed"),
    "unknown element in a bundle": (_bundle(b"xyz\x00"), "malformed"),
    "unknown type tag": (b"/stylize/strength\x00\x00\x00,c\x00\x00" + bytes(4), "malformed"),
    "address without a terminator": (b"/stylize/strength", "malformed"),
    "blob longer than the datagram": (b"/stylize/prompt\x00,b\x00\x00" + struct.pack(">i", 10_000), "malformed"),
    # python-osc pads an argument cut short with zero bytes: these were applied as strength 0 and seed 0.
    "float cut short": (_message("/stylize/strength", 0.62)[:-2], "malformed"),
    "int cut short": (_message("/stylize/seed", 7)[:-1], "malformed"),
    "string without its terminator": (_message("/stylize/prompt", "abc")[:-1] + b"d", "malformed"),
    "oversized datagram": (_message("/stylize/prompt", "x" * MAX_DATAGRAM_BYTES), "size"),
    "too many messages": (_bundle(*[_message("/stylize/seed", 1)] * (MAX_MESSAGES + 1)), "count"),
    "one level too deep": (_nested(MAX_DEPTH + 1), "depth"),
}


@pytest.mark.parametrize(("datagram", "reason"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_datagrams_are_dropped_and_counted_without_stalling(datagram: bytes, reason: str) -> None:
    store = SettingsStore(StyleSettings())
    reasons: list[str] = []
    listener = OscListener(OscConfig(), store, on_reject=reasons.append)
    # On a thread of its own with a bound, so a parser that loops forever fails the test instead of hanging it.
    worker = threading.Thread(target=listener.datagram_received, args=(datagram, ("127.0.0.1", 5000)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "the listener was still parsing the datagram after 10 s: it would stall the loop"
    assert reasons == [reason]
    assert (listener.rejected, listener.accepted) == (1, 0)
    assert store.global_settings == StyleSettings()


def test_nesting_up_to_the_limit_is_applied() -> None:
    store = SettingsStore(StyleSettings())
    listener = OscListener(OscConfig(), store)
    listener.datagram_received(_nested(MAX_DEPTH), ("127.0.0.1", 5000))
    assert (listener.accepted, listener.rejected) == (1, 0)
    assert store.global_settings.strength == 0.5


async def test_hostile_datagrams_over_udp_leave_the_server_serving(server: RunningServer) -> None:
    osc = _client(server)
    listener = _listener(server)
    before = await _settings(server)
    for datagram, _ in HOSTILE.values():
        osc._sock.sendto(datagram, ("127.0.0.1", _port(server)))
    await eventually(lambda: listener.rejected == len(HOSTILE))
    assert await _settings(server) == before
    osc.send_message("/stylize/strength", 0.4)
    await eventually(lambda: listener.accepted == 1)
    async with server.http.get(server.url("/metrics")) as response:
        text = await response.text()
    for reason in ("malformed", "depth", "value", "size", "count"):
        expected = sum(1 for _, r in HOSTILE.values() if r == reason)
        assert f'stylize_osc_rejected_total{{reason="{reason}"}} {float(expected)}' in text, reason
