"""WebRTC peers: one `Session` per caller, created from an offer and closed on every way out.

Ways out: the caller hangs up (DELETE, or its connection fails or closes), the server stops, or the
watchdog finds the session stale: an offer whose peer never connects holds its `RTCPeerConnection`
"connecting" forever (no ICE ever comes), and a vanished peer is noticed by aiortc's consent checks
only after ~30 s. So a session not connected within `[server] connect_timeout_s`, or connected but
without a camera frame for `[server] idle_timeout_s`, is closed and its slot freed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiortc import (
    InvalidAccessError,
    InvalidStateError,
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpSender,
    RTCSessionDescription,
)
from pydantic import ValidationError

from server.bounded_json import parse_json
from server.config import ServerConfig, TransportConfig
from server.control.events import EventHub, StreamEvent
from server.control.settings import SettingsPatch, SettingsStore, StreamSettingsPatch, UnknownStreamError
from server.engine_service import EngineStatus
from server.fields import DEFAULT_NAME, validation_detail
from server.live.admission import Attempt, make_room
from server.live.dtls_role import as_dtls_server
from server.live.frame_counts import FrameCounts
from server.live.session import Session
from server.live.track import StylizedTrack
from server.observe.metrics import Metrics

if TYPE_CHECKING:
    from server.live.outputs import NamedOutputs

logger = logging.getLogger(__name__)


class PeersFull(Exception):
    """Every slot (`[server] max_peers`) is taken."""


class OfferRejected(Exception):
    """aiortc refused the offer; the half-made peer has been closed."""


# What aiortc raises for an offer it cannot take (bad SDP, a description in the wrong state).
SDP_ERRORS = (ValueError, InvalidStateError, InvalidAccessError)


def codec_preferences(codec: str) -> list[RTCRtpCodecCapability]:
    """aiortc's capabilities for `codec` ("vp8" or "h264"): the only codec the answer will carry."""
    mime_type = f"video/{codec}".lower()
    return [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() == mime_type]


class PeerManager:
    def __init__(
        self,
        config: ServerConfig,
        engine: EngineStatus,
        settings: SettingsStore,
        events: EventHub,
        metrics: Metrics | None = None,
        transport: TransportConfig | None = None,
        outputs: NamedOutputs | None = None,
    ) -> None:
        self._config = config
        self._transport = transport or TransportConfig()
        self._engine = engine
        self._settings = settings
        self._events = events
        self._metrics = metrics if metrics is not None else Metrics()
        self.sessions: dict[str, Session] = {}
        self._outputs = outputs  # told when a stream starts and ends, so outputs follow its name
        self._closing: set[asyncio.Task[bool]] = set()
        self._watchdog: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the watchdog that closes sessions that never connect or stop sending frames."""
        self._watchdog = asyncio.create_task(self._watch(), name="peers-watchdog")

    async def stop(self) -> None:
        """Stop the watchdog, then close every session."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None
        await self.close_all()

    async def _watch(self) -> None:
        connect_s, idle_s = self._config.connect_timeout_s, self._config.idle_timeout_s
        interval = min(max(min(connect_s, idle_s) / 4, 0.05), 1.0)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for session in list(self.sessions.values()):
                reason = session.stale(now, connect_s, idle_s)
                if reason is not None:
                    await self.close(session.id, reason)

    async def _make_room(self, client: str | None) -> None:
        """Close the attempts `server.live.admission` gives up for an offer from `client`."""
        attempts = [
            Attempt(session.id, session.remote, session.stats.started)
            for session in self.sessions.values()
            if session.connected_at is None
        ]
        config = self._config
        closing = make_room(
            attempts,
            client,
            len(self.sessions),
            config.max_peers,
            config.max_unconnected_per_client,
            config.offer_grace_s,
            time.monotonic(),
        )
        for stream_id in closing:
            await self.close(stream_id, "not connected, its slot given to a new offer")

    def _rtc_configuration(self) -> RTCConfiguration:
        servers = [
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in self._config.ice_servers
        ]
        return RTCConfiguration(iceServers=servers)

    async def create(
        self,
        offer: RTCSessionDescription,
        initial: SettingsPatch | None = None,
        remote: str | None = None,
        name: str = DEFAULT_NAME,
        prepare: Callable[[RTCPeerConnection], None] | None = None,
    ) -> tuple[Session, RTCSessionDescription]:
        """Answer `offer` with a new stream. Raises `PeersFull`, `EngineNotReady`, `OfferRejected` (the SDP).

        `prepare(pc)` runs before the offer is read (WHIP: any video codec, sound declined).
        """
        await self._make_room(remote)
        if len(self.sessions) >= self._config.max_peers:
            raise PeersFull(f"{len(self.sessions)} of {self._config.max_peers} streams in use")
        engine = self._engine.engine
        session = Session(id=uuid.uuid4().hex[:12], pc=RTCPeerConnection(self._rtc_configuration()), name=name)
        session.remote = remote
        pc = session.pc
        self.sessions[session.id] = session
        self._settings.add_stream(session.id, name)
        # The transceiver exists before the remote description so codec preferences take effect.
        transceiver = pc.addTransceiver("video", direction="sendrecv")
        transceiver.setCodecPreferences(codec_preferences(self._transport.codec))

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind != "video" or session.track is not None:
                return
            output = StylizedTrack(
                track,
                session.id,
                engine,
                lambda: self._settings.effective(session.id),
                FrameCounts(session.stats, self._metrics),
                max_failed=self._config.max_failed_frames,
                on_failed=lambda reason: self._close_later(session.id, reason),
            )
            session.track = output
            transceiver.sender.replaceTrack(output)
            output.start()
            if self._outputs is not None:
                self._outputs.stream_started(session.id, session.name, output)

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label != "control":
                return

            @channel.on("message")
            def on_message(message: str | bytes) -> None:
                channel.send(json.dumps(self._control(session.id, message)))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            logger.info("peer state stream=%s state=%s", session.id, pc.connectionState)
            if pc.connectionState == "connected" and session.connected_at is None:
                session.connected_at = time.monotonic()
            if pc.connectionState in ("failed", "closed"):
                await self.close(session.id, f"connection {pc.connectionState}")

        try:
            if prepare is not None:
                prepare(pc)
            if initial is not None:
                self._settings.update_stream(session.id, initial, "http")
            await pc.setRemoteDescription(as_dtls_server(offer))
            if session.track is None:
                raise OfferRejected("the offer carries no video track")
            await pc.setLocalDescription(await pc.createAnswer())
        except OfferRejected:
            await self.close(session.id, "offer rejected")
            raise
        except SDP_ERRORS as e:
            await self.close(session.id, "offer rejected")
            raise OfferRejected(str(e) or type(e).__name__) from e
        except BaseException:
            # Not the caller's fault: a bug or a failing dependency. Logged here, answered 500.
            logger.exception("offer failed stream=%s", session.id)
            await self.close(session.id, "offer failed")
            raise
        logger.info("stream up stream=%s from=%s peers=%d", session.id, remote, len(self.sessions))
        session.announced = True
        self._metrics.streams_active.set(len(self.sessions))
        self._events.publish(StreamEvent(action="up", stream_id=session.id, streams=len(self.sessions)))
        local = pc.localDescription
        return session, RTCSessionDescription(sdp=local.sdp, type=local.type)

    def _control(self, stream_id: str, message: str | bytes) -> dict[str, object]:
        """A data-channel message: the same JSON as PATCH settings, applied to this stream."""
        try:
            data = parse_json(message.encode() if isinstance(message, str) else message)
        except ValueError as e:  # bad JSON, bad UTF-8, nesting or numbers past the bounds
            return {"type": "error", "error": "message is not valid JSON", "detail": str(e)}
        if not isinstance(data, dict):
            return {"type": "error", "error": "message must be a JSON object", "detail": type(data).__name__}
        try:
            patch = StreamSettingsPatch.model_validate(data)
            settings = self._settings.update_stream(stream_id, patch, "datachannel")
        except ValidationError as e:
            return {"type": "error", "error": "invalid fields", "detail": validation_detail(e)}
        except UnknownStreamError:
            return {"type": "error", "error": "stream closed", "detail": stream_id}
        return {"type": "settings", "settings": settings.model_dump(), "overrides": self._settings.overrides(stream_id)}

    def _close_later(self, stream_id: str, reason: str) -> None:
        """Close from a callback (the track gave up): a task this manager owns and `close_all` awaits."""
        task = asyncio.create_task(self.close(stream_id, reason), name=f"close-{stream_id}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self, stream_id: str, reason: str = "hung up") -> bool:
        session = self.sessions.pop(stream_id, None)
        if session is None:
            return False
        self._settings.remove_stream(stream_id)
        if self._outputs is not None:
            await self._outputs.stream_ended(stream_id)
        if self._engine.ready:
            self._engine.engine.forget(stream_id)
        if session.track is not None:
            await session.track.aclose()
        await session.pc.close()
        self._metrics.streams_active.set(len(self.sessions))
        if session.announced:
            logger.info(
                "stream down stream=%s from=%s reason=%s peers=%d",
                stream_id,
                session.remote,
                reason,
                len(self.sessions),
            )
            self._events.publish(
                StreamEvent(action="down", stream_id=stream_id, reason=reason, streams=len(self.sessions))
            )
        return True

    async def close_all(self) -> None:
        await asyncio.gather(*self._closing, return_exceptions=True)
        await asyncio.gather(*(self.close(stream_id, "server stopping") for stream_id in list(self.sessions)))
