"""The live room as the app sees it: offers, streams, outputs and client config; peers and encoders."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from server import keys
from server.jpeg import JpegOutput
from server.live import bitrate, client_config, offer_routes, output_routes
from server.live.peers import PeerManager


async def _bitrate_ctx(app: web.Application) -> AsyncIterator[None]:
    previous = bitrate.apply(bitrate.Bitrates.from_config(app[keys.CONFIG].transport))
    yield
    bitrate.restore(previous)


async def _jpeg_ctx(app: web.Application) -> AsyncIterator[None]:
    encoder = JpegOutput(quality=app[keys.CONFIG].outputs.jpeg_quality)
    app[keys.JPEG] = encoder
    yield
    encoder.close()


async def _peers_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    peers = PeerManager(
        config.server, app[keys.ENGINE], app[keys.SETTINGS], app[keys.EVENTS], app[keys.METRICS], config.transport
    )
    app[keys.PEERS] = peers
    peers.start()
    yield
    await peers.stop()


async def _end_mjpeg_streams(app: web.Application) -> None:
    app[keys.JPEG].stop_streams()


CONTEXTS: list[Callable[[web.Application], AsyncIterator[None]]] = [_bitrate_ctx, _jpeg_ctx, _peers_ctx]


def setup_routes(app: web.Application) -> None:
    app.on_shutdown.append(_end_mjpeg_streams)
    app.add_routes(offer_routes.routes)
    app.add_routes(output_routes.routes)
    app.add_routes(client_config.routes)
