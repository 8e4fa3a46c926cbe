"""The live room as the app sees it: offers, streams, outputs and client config; peers and encoders.

Outputs by name (MJPEG, snapshot, WHEP viewers, /view/{name}) and WHIP publishers live here too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from server import keys
from server.jpeg import JpegOutput
from server.live import (
    bitrate,
    client_config,
    named_output_routes,
    offer_routes,
    output_routes,
    whep_routes,
    whip_routes,
)
from server.live import keys as live_keys
from server.live.media_ports import MediaPorts
from server.live.outputs import NamedOutputs, waiting_card
from server.live.peers import PeerManager
from server.live.viewers import ViewerManager

logger = logging.getLogger(__name__)


async def _bitrate_ctx(app: web.Application) -> AsyncIterator[None]:
    previous = bitrate.apply(bitrate.Bitrates.from_config(app[keys.CONFIG].transport))
    yield
    bitrate.restore(previous)


async def _media_ports_ctx(app: web.Application) -> AsyncIterator[None]:
    ports = app[keys.CONFIG].transport.media_port_range
    if ports is None:
        yield
        return
    uninstall = MediaPorts(ports).install(asyncio.get_running_loop())
    logger.info("WebRTC media on UDP ports %d-%d", ports.start, ports.stop - 1)
    yield
    uninstall()


async def _jpeg_ctx(app: web.Application) -> AsyncIterator[None]:
    encoder = JpegOutput(quality=app[keys.CONFIG].outputs.jpeg_quality)
    app[live_keys.JPEG] = encoder
    yield
    encoder.close()


async def _outputs_ctx(app: web.Application) -> AsyncIterator[None]:
    outputs = NamedOutputs()
    outputs.waiting_jpeg = await app[live_keys.JPEG].encode(waiting_card())
    app[live_keys.OUTPUTS] = outputs
    yield
    await outputs.close()


async def _peers_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    peers = PeerManager(
        config.server,
        app[keys.ENGINE],
        app[keys.SETTINGS],
        app[keys.EVENTS],
        app[keys.METRICS],
        config.transport,
        outputs=app[live_keys.OUTPUTS],
    )
    app[live_keys.PEERS] = peers
    peers.start()
    yield
    await peers.stop()


async def _viewers_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    viewers = ViewerManager(config.server, config.outputs, config.transport, app[live_keys.OUTPUTS])
    app[live_keys.VIEWERS] = viewers
    yield
    await viewers.close_all()


async def _end_mjpeg_streams(app: web.Application) -> None:
    app[live_keys.JPEG].stop_streams()


CONTEXTS: list[Callable[[web.Application], AsyncIterator[None]]] = [
    _bitrate_ctx,
    _media_ports_ctx,
    _jpeg_ctx,
    _outputs_ctx,
    _peers_ctx,
    _viewers_ctx,
]


# Every route of the room (a cluster's front door relays them to its workers).
ROUTES: list[web.RouteTableDef] = [
    offer_routes.routes,
    output_routes.routes,
    named_output_routes.routes,
    whip_routes.routes,
    whep_routes.routes,
    client_config.routes,
]


def setup_routes(app: web.Application) -> None:
    app.on_shutdown.append(_end_mjpeg_streams)
    for table in ROUTES:
        app.add_routes(table)
