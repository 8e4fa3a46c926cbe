"""OSC both ways: feedback to [osc] feedback targets and subscribed controllers, and /stylize/name/... addresses.

The controllers are python-osc on real UDP sockets, as TouchOSC (feedback) and Resolume (an OSC map
sending /stylize/...) are.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from pythonosc.osc_message_builder import OscMessageBuilder

from server import keys
from server.__main__ import config_from_args, parse_args
from server.config import Config, ConfigError, load_config
from server.control import keys as control_keys
from server.control.settings import SettingsPatch
from server.testing.osc_controller import OscController
from server.testing.servers import RunningServer, start_server, stop_server
from server.testing.waiting import eventually


@dataclass
class Rig:
    server: RunningServer
    target: OscController  # an [osc] feedback target: only listens

    def controller(self) -> OscController:
        return OscController(self.server.app[control_keys.OSC].port)


@pytest.fixture
async def rig(make_config: Callable[..., Config]) -> AsyncIterator[Rig]:
    target = OscController(0)
    await target.start()
    server = await start_server(make_config(osc={"feedback": [f"127.0.0.1:{target.port}"]}), ready=False)
    yield Rig(server, target)
    await stop_server(server)
    target.close()


async def test_every_change_from_any_source_reaches_the_feedback_targets(rig: Rig) -> None:
    server, target = rig.server, rig.target
    async with server.http.patch(server.url("/api/settings"), json={"strength": 0.3, "prompt": "by http"}) as r:
        assert r.status == 200
    assert await target.wait_for("/stylize/strength", 0.3)
    assert await target.wait_for("/stylize/prompt", "by http")
    async with server.http.post(server.url("/api/presets/anime/apply"), json={"prompt": "a fox"}) as r:
        assert r.status == 200
    assert await target.wait_for("/stylize/preset", "anime")
    async with server.http.patch(server.url("/api/outputs/cam/settings"), json={"paused": True}) as r:
        assert r.status == 200
    assert await target.wait_for("/stylize/name/cam/pause", 1)

    # Resolume's OSC map: the name's address, sent over UDP.
    resolume = rig.controller()
    resolume.send("/stylize/name/cam/seed", 7)
    assert await target.wait_for("/stylize/name/cam/seed", 7)
    async with server.http.get(server.url("/api/outputs/cam/settings")) as r:
        assert (await r.json())["overrides"] == {"paused": True, "seed": 7}
    resolume.close()


async def test_feedback_is_throttled_per_address_and_the_latest_value_wins(rig: Rig) -> None:
    store = rig.server.app[keys.SETTINGS]
    for step in range(1, 201):  # a dragged fader: far more changes than any controller wants
        store.update_global(SettingsPatch(strength=step / 200), "http")
    store.update_global(SettingsPatch(prompt="after the drag"), "http")
    await rig.target.wait_for("/stylize/prompt", "after the drag")
    await rig.target.wait_for("/stylize/strength", 1.0)
    assert len(rig.target.received("/stylize/strength")) <= 2


async def test_a_controller_subscribes_and_never_hears_its_own_changes(rig: Rig) -> None:
    """The TouchOSC recipe: /stylize/feedback/subscribe <its port>, then faders follow every change."""
    server, target = rig.server, rig.target
    touchosc = rig.controller()
    await touchosc.start()
    try:
        touchosc.send("/stylize/feedback/subscribe", touchosc.port)
        # It catches up at once with the current settings.
        assert await touchosc.wait_for("/stylize/strength", 0.5)
        assert await touchosc.wait_for("/stylize/prompt")

        touchosc.send("/stylize/strength", 0.44)
        assert await target.wait_for("/stylize/strength", 0.44), "the change happened and others hear it"
        async with server.http.patch(server.url("/api/settings"), json={"prompt": "from the page"}) as r:
            assert r.status == 200
        assert await touchosc.wait_for("/stylize/prompt", "from the page")
        assert all(abs(args[0] - 0.44) > 1e-6 for args in touchosc.received("/stylize/strength")), "no echo"

        touchosc.send("/stylize/feedback/unsubscribe", touchosc.port)
        feedback = server.app[control_keys.OSC_FEEDBACK]
        await eventually(lambda: ("127.0.0.1", touchosc.port) not in feedback.targets, what="the unsubscribe")
    finally:
        touchosc.close()


async def test_bad_feedback_and_name_messages_are_dropped_counted_and_change_nothing(rig: Rig) -> None:
    server = rig.server
    listener, feedback = server.app[control_keys.OSC], server.app[control_keys.OSC_FEEDBACK]
    before = server.app[keys.SETTINGS].global_settings
    controller = rig.controller()
    bad = [
        ("/stylize/feedback/subscribe", ("x",)),
        ("/stylize/feedback/subscribe", (0,)),
        ("/stylize/feedback/subscribe", (70000,)),
        ("/stylize/feedback/subscribe", ()),
        ("/stylize/name/latest/strength", (0.1,)),
        ("/stylize/name/bad!/strength", (0.1,)),
        ("/stylize/name/cam", (0.1,)),
        ("/stylize/name/cam/strength", (3.0,)),
    ]
    for address, args in bad:
        controller.send(address, *args)
    await eventually(lambda: listener.rejected >= len(bad), what="every bad message dropped")
    assert listener.rejected == len(bad) and listener.accepted == 0
    assert feedback.targets == [("127.0.0.1", rig.target.port)]
    assert server.app[keys.SETTINGS].global_settings == before
    assert server.app[keys.SETTINGS].named_overrides() == {}
    controller.close()


def test_osc_host_flag_sets_the_listener_address() -> None:
    assert config_from_args(parse_args(["--osc-host", "0.0.0.0"])).osc.host == "0.0.0.0"


@pytest.mark.parametrize("entry", ["no-port", "host:0", "host:70000", ":9001", "[::1]"])
def test_a_bad_feedback_target_is_a_config_error_naming_the_key(entry: str) -> None:
    with pytest.raises(ConfigError, match=r"\[osc\] feedback"):
        load_config(env={}, overrides={"osc": {"feedback": [entry]}})
    assert load_config(env={}, overrides={"osc": {"feedback": ["[::1]:9001", "ipad.local:9001"]}}).osc.feedback


class _Counting(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.bytes = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.bytes += len(data)


async def test_subscribes_cannot_amplify_traffic_at_a_victim(rig: Rig) -> None:
    """UDP sources can be forged: subscribes naming a victim's ports must not make the server send the
    victim more bytes than the subscribes themselves took (a reflection attack)."""
    loop = asyncio.get_running_loop()
    victims = [await loop.create_datagram_endpoint(_Counting, local_addr=("127.0.0.1", 0)) for _ in range(8)]
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    try:
        for _round in range(5):
            for transport, _ in victims:
                port = transport.get_extra_info("sockname")[1]
                datagram = OscMessageBuilder("/stylize/feedback/subscribe")
                datagram.add_arg(port)
                sent += attacker.sendto(datagram.build().dgram, ("127.0.0.1", rig.server.app[control_keys.OSC].port))
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        received = sum(protocol.bytes for _, protocol in victims)
        assert received <= 3 * sent, f"{received} bytes reflected for {sent} sent: x{received / sent:.1f}"
        assert received > 0, "a controller that subscribes still hears the current settings"
    finally:
        attacker.close()
        for transport, _ in victims:
            transport.close()
