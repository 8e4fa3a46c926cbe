"""OSCQuery: the JSON namespace and HOST_INFO over HTTP, LISTEN over a WebSocket, mDNS with zeroconf.

The client speaks what TouchDesigner's and Chataigne's OSCQuery clients speak: GET the tree, read
HOST_INFO for the OSC port, send OSC there over UDP, LISTEN for values over the WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from pythonosc.osc_message import OscMessage
from pythonoscquery.osc_query_client import OSCQueryClient
from pythonoscquery.shared.osc_access import OSCAccess
from pythonoscquery.shared.osc_path_node import python_type_list_to_osc_type
from zeroconf import IPVersion, ServiceInfo
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from server.config import Config
from server.control import keys as control_keys
from server.control.mdns import OSC_SERVICE, OSCQUERY_SERVICE, service_infos
from server.control.osc import FIELDS
from server.control.osc_namespace import LEAVES
from server.testing.osc_controller import OscController
from server.testing.servers import RunningServer, free_port, start_server, stop_server
from server.testing.waiting import eventually


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    running = await start_server(make_config(osc={"query_port": free_port()}), ready=False)
    yield running
    await stop_server(running)


def query_url(server: RunningServer, path: str = "/") -> str:
    return f"http://127.0.0.1:{server.app[control_keys.OSC_QUERY].port}{path}"


async def get(server: RunningServer, path: str) -> tuple[int, Any]:
    async with server.http.get(query_url(server, path)) as response:
        return response.status, (await response.json() if response.status == 200 else None)


async def test_the_namespace_describes_every_address_with_its_type_range_and_value(server: RunningServer) -> None:
    async with server.http.patch(server.url("/api/outputs/cam/settings"), json={"strength": 0.2}) as r:
        assert r.status == 200
    status, root = await get(server, "/")
    assert status == 200 and root["FULL_PATH"] == "/"
    stylize = root["CONTENTS"]["stylize"]["CONTENTS"]
    strength = stylize["strength"]
    assert strength["FULL_PATH"] == "/stylize/strength" and strength["TYPE"] == "f" and strength["ACCESS"] == 3
    assert strength["RANGE"] == [{"MIN": 0.0, "MAX": 1.0}] and strength["VALUE"] == [0.5] and strength["DESCRIPTION"]
    assert stylize["seed"]["TYPE"] == "i" and stylize["prompt"]["TYPE"] == "s"
    assert "watercolor" in stylize["preset"]["RANGE"][0]["VALS"]
    assert "CONTENTS" not in stylize["preset"], "a method, not also a container"
    assert stylize["preset_next"]["ACCESS"] == 2 and stylize["preset_next"]["TYPE"] == "i"
    assert stylize["feedback"]["CONTENTS"]["subscribe"]["TYPE"] == "i"
    assert stylize["name"]["CONTENTS"]["cam"]["CONTENTS"]["strength"]["VALUE"] == [0.2]

    assert await get(server, "/stylize/name/cam/strength?VALUE") == (200, {"VALUE": [0.2]})
    assert await get(server, "/stylize/strength?RANGE") == (200, {"RANGE": [{"MIN": 0.0, "MAX": 1.0}]})
    assert (await get(server, "/stylize/nothing"))[0] == 404
    assert (await get(server, "/stylize/strength?TAGS"))[0] == 400
    assert (await get(server, "/stylize?VALUE"))[0] == 204, "a container holds no value"

    status, info = await get(server, "/?HOST_INFO")
    assert info["OSC_PORT"] == server.app[control_keys.OSC].port and info["OSC_TRANSPORT"] == "UDP"
    assert info["OSC_IP"] == "127.0.0.1" and info["EXTENSIONS"]["LISTEN"] is True


async def test_listen_streams_each_change_of_a_listened_value_as_osc(server: RunningServer) -> None:
    """The TouchDesigner recipe: find the OSC port in HOST_INFO, LISTEN, send OSC, see values come back."""
    _, info = await get(server, "/?HOST_INFO")
    panel = OscController(info["OSC_PORT"])
    async with server.http.ws_connect(query_url(server)) as ws:
        for path in ("/stylize/strength", "/stylize/name/cam/prompt", "/stylize/seed"):
            await ws.send_str(json.dumps({"COMMAND": "LISTEN", "DATA": path}))
        await ws.send_str(json.dumps({"COMMAND": "IGNORE", "DATA": "/stylize/seed"}))
        await ws.send_str("not json")  # ignored, as is anything that is not a command

        wanted = {"/stylize/strength", "/stylize/name/cam/prompt"}
        await eventually(
            lambda: server.app[control_keys.OSC_QUERY].listened() == wanted, what="LISTEN and IGNORE applied"
        )
        panel.send("/stylize/seed", 99)  # ignored path: not sent
        panel.send("/stylize/strength", 0.75)
        message = await ws.receive(timeout=10)
        assert message.type == aiohttp.WSMsgType.BINARY
        osc = OscMessage(message.data)
        assert osc.address == "/stylize/strength" and abs(osc.params[0] - 0.75) < 1e-6

        # A name's value moves when the name is styled over HTTP.
        async with server.http.patch(server.url("/api/outputs/cam/settings"), json={"prompt": "cam only"}) as r:
            assert r.status == 200
        osc = OscMessage((await ws.receive(timeout=10)).data)
        assert (osc.address, osc.params) == ("/stylize/name/cam/prompt", ["cam only"])
    panel.close()


async def test_python_oscquery_reads_the_namespace_and_its_addresses_work(server: RunningServer) -> None:
    """PyPI's python-oscquery client: every node parses (none both a method and a container, every
    method typed by its VALUE), and what it lists is what the OSC listener takes."""
    async with server.http.patch(server.url("/api/outputs/cam/settings"), json={"strength": 0.2}) as r:
        assert r.status == 200
    port = server.app[control_keys.OSC_QUERY].port
    loopback = [socket.inet_aton("127.0.0.1")]
    service = ServiceInfo(OSCQUERY_SERVICE, f"Stylize.{OSCQUERY_SERVICE}", port, addresses=loopback)
    client = OSCQueryClient(service)
    # The client is blocking (requests): off the loop the server runs on.
    root = await asyncio.to_thread(client.query_node, "/")
    info = await asyncio.to_thread(client.get_host_info)
    assert root is not None and info is not None and info.osc_port == server.app[control_keys.OSC].port
    nodes = {node.full_path: node for node in root}
    strength = nodes["/stylize/strength"]
    assert strength.access == OSCAccess.READWRITE_VALUE and strength.value == [0.5]
    assert python_type_list_to_osc_type(strength.type) == "f"
    assert nodes["/stylize/name/cam/strength"].value == [0.2]
    assert python_type_list_to_osc_type(nodes["/stylize/prompt"].type) == "s"
    for path in ("/stylize/preset_next", "/stylize/preset_prev", "/stylize/feedback/subscribe"):
        assert nodes[path].access == OSCAccess.WRITEONLY_VALUE and python_type_list_to_osc_type(nodes[path].type) == "i"
    assert not nodes["/stylize/preset"].is_container

    # Every method the client found, sent a value of its type, is taken by the listener.
    panel = OscController(info.osc_port)
    listener = server.app[control_keys.OSC]
    ids = [preset.id for preset in await server.app[control_keys.PRESETS].presets()]
    sample = {"s": "a fox", "f": 0.4, "i": 1}
    # Every method but lora/scale, which changes a LoRA worn (none is here): tests/test_lora_live.py sends it.
    methods = [
        node
        for path, node in nodes.items()
        if not node.is_container and "/feedback/" not in path and not path.endswith("/lora/scale")
    ]
    assert len(methods) > 20
    for node in methods:
        kind = python_type_list_to_osc_type(node.type)
        value = ids[0] if node.full_path.endswith("/preset") else sample[kind]
        value = "depth" if node.full_path.endswith("/control/kind") else value
        panel.send(node.full_path, value)
    await eventually(lambda: listener.accepted == len(methods), what="every listed method to be taken")
    assert listener.rejected == 0
    panel.close()


def test_the_osc_leaves_are_the_addresses_the_listener_takes() -> None:
    assert {osc: leaf.field for osc, leaf in LEAVES.items() if osc != "preset"} == FIELDS


def test_the_mdns_records_name_both_services_and_ports() -> None:
    infos = service_infos("192.168.1.20", 9010, 9000, machine="stage-pc.example")
    assert [(info.type, info.port) for info in infos] == [(OSCQUERY_SERVICE, 9010), (OSC_SERVICE, 9000)]
    assert infos[0].name == f"Stylize on stage-pc.{OSCQUERY_SERVICE}" and infos[0].server == "stage-pc.local."
    assert infos[0].parsed_addresses() == ["192.168.1.20"]


async def test_oscquery_is_advertised_over_mdns_when_enabled(make_config: Callable[..., Config]) -> None:
    running = await start_server(make_config(osc={"query_port": free_port(), "mdns": True}), ready=False)
    browser = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    try:
        name = f"Stylize on {socket.gethostname().split('.')[0]}"[:63] + "." + OSCQUERY_SERVICE

        async def found() -> AsyncServiceInfo | None:
            info = AsyncServiceInfo(OSCQUERY_SERVICE, name)
            return info if await info.async_request(browser.zeroconf, 500) else None

        info = await eventually(found, 20, what="the _oscjson._tcp service on loopback")
        assert info.port == running.app[control_keys.OSC_QUERY].port
        assert info.parsed_addresses() == ["127.0.0.1"]
    finally:
        await browser.async_close()
        await stop_server(running)


async def test_web_pages_cannot_read_or_listen(server: RunningServer) -> None:
    """A page open in any browser on the machine sends an Origin (always on a WebSocket, which no CORS
    guards): it gets nothing. A rebound name in Host gets nothing either. Controllers send neither."""
    page = {"Origin": "http://evil.example"}
    async with server.http.get(query_url(server, "/stylize/prompt?VALUE"), headers=page) as response:
        assert response.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with server.http.ws_connect(query_url(server), origin="http://evil.example"):
            pass
    assert refused.value.status == 403
    assert server.app[control_keys.OSC_QUERY].listened() == set()
    port = server.app[control_keys.OSC_QUERY].port
    async with server.http.get(query_url(server, "/"), headers={"Host": f"evil.example:{port}"}) as response:
        assert response.status == 403
    async with server.http.get(query_url(server, "/"), headers={"Host": f"localhost:{port}"}) as response:
        assert response.status == 200
