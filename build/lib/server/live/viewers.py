"""WHEP viewers: receive-only connections that play one name's stylized output.

Viewers are not streams: they start no model work, have their own limit (`[outputs] max_viewers`)
and outlive the performer's reconnects (their track follows the name, not a stream). A viewer may
connect before any stream of its name exists; it plays from the first frame that name gets. One
whose connection is not up within `[outputs] viewer_connect_timeout_s` is closed, as is one whose
connection fails or closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from server.config import OutputsConfig, ServerConfig, TransportConfig
from server.live.admission import Attempt, make_room
from server.live.dtls_role import as_dtls_server
from server.live.negotiation import open_to_other_software, video_direction
from server.live.outputs import NamedOutputs
from server.live.peers import SDP_ERRORS
from server.live.viewer_track import NamedOutputTrack

logger = logging.getLogger(__name__)


class ViewersFull(Exception):
    """Every viewer slot (`[outputs] max_viewers`) is taken."""


class ViewerRejected(Exception):
    """The offer cannot be answered with video to play; the half-made connection has been closed."""


@dataclass
class Viewer:
    id: str
    name: str
    pc: RTCPeerConnection
    created: float = field(default_factory=time.time)
    client: str | None = None  # who offered it: a client's unconnected attempts are limited
    since: float = field(default_factory=time.monotonic)
    watchdog: asyncio.Task[None] | None = None

    def describe(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "state": self.pc.connectionState, "created": self.created}


class ViewerManager:
    def __init__(
        self, server: ServerConfig, outputs_config: OutputsConfig, transport: TransportConfig, outputs: NamedOutputs
    ) -> None:
        self._ice = [RTCIceServer(**s.model_dump(exclude_none=True)) for s in server.ice_servers]
        self._limit = outputs_config.max_viewers
        self._connect_timeout_s = outputs_config.viewer_connect_timeout_s
        self._per_client = server.max_unconnected_per_client
        self._grace_s = server.offer_grace_s
        self._codec = transport.codec
        self._outputs = outputs
        self.viewers: dict[str, Viewer] = {}

    async def create(
        self, name: str, offer: RTCSessionDescription, client: str | None = None
    ) -> tuple[Viewer, RTCSessionDescription]:
        attempts = [
            Attempt(viewer.id, viewer.client, viewer.since)
            for viewer in self.viewers.values()
            if viewer.pc.connectionState != "connected"
        ]
        in_use, now = len(self.viewers), time.monotonic()
        for viewer_id in make_room(attempts, client, in_use, self._limit, self._per_client, self._grace_s, now):
            logger.info("viewer not connected, its slot given to a new offer viewer=%s", viewer_id)
            await self.close(viewer_id)
        if len(self.viewers) >= self._limit:
            raise ViewersFull(f"{len(self.viewers)} of {self._limit} viewers watching")
        pc = RTCPeerConnection(RTCConfiguration(self._ice))
        viewer = Viewer(id=uuid.uuid4().hex[:12], name=name, pc=pc, client=client)
        self.viewers[viewer.id] = viewer
        pc = viewer.pc
        pc.addTransceiver(NamedOutputTrack(self._outputs.viewer_joined(name)), direction="sendonly")

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            logger.info("viewer state viewer=%s name=%s state=%s", viewer.id, name, pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                await self.close(viewer.id)

        try:
            open_to_other_software(pc, offer.sdp, self._codec)
            await pc.setRemoteDescription(as_dtls_server(offer))
            await pc.setLocalDescription(await pc.createAnswer())
            if video_direction(pc) != "sendonly":
                raise ViewerRejected("the offer must take video (a recvonly video m-line)")
        except ViewerRejected:
            await self.close(viewer.id)
            raise
        except SDP_ERRORS as e:
            await self.close(viewer.id)
            raise ViewerRejected(str(e) or type(e).__name__) from e
        except BaseException:
            # Not the caller's fault: a bug or a failing dependency. Logged here, answered 500.
            logger.exception("viewer offer failed viewer=%s name=%s", viewer.id, name)
            await self.close(viewer.id)
            raise
        viewer.watchdog = asyncio.create_task(self._close_unless_connected(viewer), name=f"viewer-{viewer.id}")
        logger.info("viewer joined viewer=%s name=%s viewers=%d", viewer.id, name, len(self.viewers))
        local = pc.localDescription
        return viewer, RTCSessionDescription(sdp=local.sdp, type=local.type)

    async def close(self, viewer_id: str) -> bool:
        viewer = self.viewers.pop(viewer_id, None)
        if viewer is None:
            return False
        if viewer.watchdog is not None and viewer.watchdog is not asyncio.current_task():
            viewer.watchdog.cancel()
            await asyncio.gather(viewer.watchdog, return_exceptions=True)
        self._outputs.viewer_left(viewer.name)
        await viewer.pc.close()
        logger.info("viewer left viewer=%s name=%s viewers=%d", viewer_id, viewer.name, len(self.viewers))
        return True

    async def close_all(self) -> None:
        await asyncio.gather(*(self.close(viewer_id) for viewer_id in list(self.viewers)))

    async def _close_unless_connected(self, viewer: Viewer) -> None:
        await asyncio.sleep(self._connect_timeout_s)
        if viewer.pc.connectionState != "connected":
            logger.info("viewer not connected in time viewer=%s", viewer.id)
            await self.close(viewer.id)
