"""Transport settings: the codec the answer carries, the sender's bitrates, ICE servers for the page."""

from __future__ import annotations

import asyncio
import random
import re
import socket
from collections.abc import Callable

import pytest
from aiortc import RTCPeerConnection
from aiortc.codecs import h264, vpx
from pydantic import ValidationError

from server.config import Config, TransportConfig
from server.live import bitrate
from server.live import keys as live_keys
from server.testing.rtc_client import connect, whep_view
from server.testing.servers import start_server, stop_server


def answer_codecs(sdp: str) -> set[str]:
    return {name.upper() for name in re.findall(r"^a=rtpmap:\d+ ([\w-]+)/", sdp, flags=re.MULTILINE)}


@pytest.mark.parametrize(("codec", "expected"), [("vp8", {"VP8"}), ("h264", {"H264"})])
async def test_the_answer_carries_only_the_configured_codec(
    make_config: Callable[..., Config], codec: str, expected: set[str]
) -> None:
    running = await start_server(make_config(transport={"codec": codec}, engine={"max_batch": 1}))
    try:
        client = await connect(running.http, running.url("/api/offer"))
        try:
            offered = answer_codecs(client.pc.localDescription.sdp)
            assert {"VP8", "H264"} <= offered, "the aiortc client offers both"
            assert answer_codecs(client.answer["sdp"]) == expected
        finally:
            await client.close()
    finally:
        await stop_server(running)


async def test_bitrates_are_set_while_the_app_runs_and_restored_after(make_config: Callable[..., Config]) -> None:
    before = bitrate.current()
    # A floor above aiortc's own VP8 ceiling (1.5 Mbps) shows the configured values are the ones in use.
    transport = {"bitrate_kbps": 3000, "min_bitrate_kbps": 2000, "max_bitrate_kbps": 4000}
    running = await start_server(make_config(transport=transport, engine={"max_batch": 1}))
    try:
        for module in (vpx, h264):
            assert (module.DEFAULT_BITRATE, module.MIN_BITRATE, module.MAX_BITRATE) == (3_000_000, 2_000_000, 4_000_000)
        client = await connect(running.http, running.url("/api/offer"))
        try:
            await client.wait_frames(5)
            session = running.app[live_keys.PEERS].sessions[client.stream_id]
            (sender,) = session.pc.getSenders()
            encoder = sender._RTCRtpSender__encoder  # type: ignore[attr-defined]  # aiortc keeps it private
            assert isinstance(encoder, vpx.Vp8Encoder)
            # Congestion control (REMB from the client) may have moved it, within the configured range.
            assert 2_000_000 <= encoder.target_bitrate <= 4_000_000
            assert encoder.codec is not None and 2_000_000 <= encoder.codec.bit_rate <= 4_000_000
        finally:
            await client.close()
    finally:
        await stop_server(running)
    assert bitrate.current() == before


def test_apply_and_restore_round_trip() -> None:
    before = bitrate.current()
    previous = bitrate.apply(bitrate.Bitrates(target=1_234_000, minimum=1_000_000, maximum=2_000_000))
    try:
        assert previous == before
        assert vpx.DEFAULT_BITRATE == h264.DEFAULT_BITRATE == 1_234_000
        assert vpx.MIN_BITRATE == h264.MIN_BITRATE == 1_000_000
        assert vpx.MAX_BITRATE == h264.MAX_BITRATE == 2_000_000
    finally:
        bitrate.restore(previous)
    assert bitrate.current() == before


def test_bitrates_must_be_ordered() -> None:
    with pytest.raises(ValidationError, match="min_bitrate_kbps <= bitrate_kbps <= max_bitrate_kbps"):
        TransportConfig(bitrate_kbps=300, min_bitrate_kbps=400, max_bitrate_kbps=6000)
    with pytest.raises(ValidationError):
        TransportConfig(codec="av1")  # type: ignore[arg-type]


async def test_client_config_serves_the_ice_servers_and_codec(make_config: Callable[..., Config]) -> None:
    ice_servers = [
        {"urls": "stun:stun.example.org:3478"},
        {"urls": ["turn:turn.example.org:3478?transport=udp"], "username": "vj", "credential": "s3cret"},
    ]
    config = make_config(server={"ice_servers": ice_servers}, transport={"codec": "h264"}, engine={"max_batch": 1})
    running = await start_server(config)
    try:
        async with running.http.get(running.url("/api/client-config")) as response:
            assert response.status == 200
            body = await response.json()
        assert body["ice_servers"] == ice_servers
        assert body["codec"] == "h264"
    finally:
        await stop_server(running)


def local_ports(pc: RTCPeerConnection) -> set[int]:
    """The ports of every local ICE candidate of a peer connection's (bundled) media."""
    gatherer = pc.getTransceivers()[0].receiver.transport.transport.iceGatherer
    return {candidate.port for candidate in gatherer.getLocalCandidates()}


def free_udp_range(size: int) -> range:
    """`size` consecutive UDP ports nothing is bound to right now."""
    for _ in range(50):
        first = random.randrange(40000, 60000 - size)
        taken = []
        try:
            for port in range(first, first + size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                taken.append(sock)
                sock.bind(("0.0.0.0", port))
            return range(first, first + size)
        except OSError:
            continue
        finally:
            for sock in taken:
                sock.close()
    raise AssertionError("no free UDP port range")


async def test_media_binds_only_ports_of_media_ports(make_config: Callable[..., Config]) -> None:
    ports = free_udp_range(24)
    # A port of the range another program holds is skipped.
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("0.0.0.0", ports[0]))
    running = await start_server(
        make_config(transport={"media_ports": f"{ports[0]}-{ports[-1]}"}, engine={"max_batch": 1})
    )
    loop = asyncio.get_running_loop()
    try:
        client = await connect(running.http, running.url("/api/offer"))
        viewer = await whep_view(running.http, running.url("/api/outputs/default/whep"))
        try:
            await client.wait_frames(3)
            await viewer.wait_frames(3)
            session = running.app[live_keys.PEERS].sessions[client.stream_id]
            watching = next(iter(running.app[live_keys.VIEWERS].viewers.values()))
            for pc in (session.pc, watching.pc):
                bound = local_ports(pc)
                assert bound and bound <= set(ports[1:]), f"{bound} not in {ports[1]}-{ports[-1]}"
        finally:
            await client.close()
            await viewer.close()
    finally:
        await stop_server(running)
        squatter.close()
    assert "create_datagram_endpoint" not in vars(loop), "the loop is put back when the app stops"


def test_media_ports_must_be_a_range() -> None:
    assert TransportConfig().media_port_range is None
    assert TransportConfig(media_ports="50000-50100").media_port_range == range(50000, 50101)
    for bad in ("50100-50000", "80-90", "50000", "a-b", "50000-70000"):
        with pytest.raises(ValidationError, match="media_ports"):
            TransportConfig(media_ports=bad)
