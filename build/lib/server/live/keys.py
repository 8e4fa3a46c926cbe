"""The live room's app state: its peers, encoders, outputs by name and viewers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from server.jpeg import JpegOutput
    from server.live.outputs import NamedOutputs
    from server.live.peers import PeerManager
    from server.live.viewers import ViewerManager

PEERS: web.AppKey[PeerManager] = web.AppKey("live.peers")
JPEG: web.AppKey[JpegOutput] = web.AppKey("live.jpeg")
OUTPUTS: web.AppKey[NamedOutputs] = web.AppKey("live.outputs")
VIEWERS: web.AppKey[ViewerManager] = web.AppKey("live.viewers")
