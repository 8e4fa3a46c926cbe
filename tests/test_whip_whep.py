"""WHIP in (RFC 9725) and WHEP out, spoken by aiortc peers with application/sdp against the running app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from server.config import Config
from server.live import keys as live_keys
from server.testing.rtc_client import NumberedTrack, SdpRefused, offer_sdp, whep_view, whip_publish
from server.testing.servers import RunningServer, start_server, stop_server
from server.testing.waiting import eventually

SDP = {"Content-Type": "application/sdp"}
SDPFRAG = "application/trickle-ice-sdpfrag"


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    running = await start_server(make_config(engine={"max_batch": 2}))
    yield running
    await stop_server(running)


async def outputs(server: RunningServer) -> dict[str, dict[str, Any]]:
    async with server.http.get(server.url("/api/outputs")) as response:
        return {output["name"]: output for output in (await response.json())["outputs"]}


def media_sections(sdp: str) -> dict[str, str]:
    """Each m= section of an SDP by kind ("audio", "video")."""
    sections = sdp.replace("\r\n", "\n").split("\nm=")[1:]
    return {section.split(" ", 1)[0]: section for section in sections}


async def test_obs_publishes_over_whip_and_players_watch_over_whep(server: RunningServer) -> None:
    """OBS recipe: WHIP output (H.264 and sound, receiving nothing) into a name; players on WHEP."""
    peers = server.app[live_keys.PEERS]
    # A projector pointed at the name before the performer starts waits for it.
    early = await whep_view(server.http, server.url("/api/outputs/stage/whep"))
    viewers = [early]
    obs = await whip_publish(server.http, server.url("/api/whip/stage"), receive=False, codec="h264", audio=True)
    publishers = [obs]
    try:
        assert f"/api/whip/stage/{obs.stream_id}/" in obs.answer["location"]
        answer = media_sections(obs.answer["sdp"])
        assert "H264/90000" in answer["video"] and "a=recvonly" in answer["video"]
        assert "a=inactive" in answer["audio"], "sound is declined, not decoded into a queue nobody reads"
        await early.wait_frames(10)
        viewers.append(await whep_view(server.http, server.url("/api/outputs/stage/whep")))
        await viewers[1].wait_frames(5)
        listed = await outputs(server)
        assert listed["stage"]["viewers"] == 2 and listed["stage"]["stream_id"] == obs.stream_id
        assert list(peers.sessions) == [obs.stream_id], "viewers are not streams: they start no model work"
        # Nobody reads the stylized video back from OBS: it is still sent (to the name), not dropped at send.
        stats = peers.sessions[obs.stream_id].stats
        await eventually(lambda: stats.frames_out >= 10, what="OBS's stream to be stylized")

        # OBS stops (DELETE its session) and starts again: the viewers stay and play the new stream.
        async with server.http.delete(obs.answer["location"]) as response:
            assert response.status == 200
        assert obs.stream_id not in peers.sessions
        again = await whip_publish(server.http, server.url("/api/whip/stage"))
        publishers.append(again)
        await again.wait_frames(5)  # this one receives: its stylized video comes back on the same connection
        seen = len(early.received)
        await early.wait_frames(10)
        assert early.pc.connectionState == "connected"
        assert (await outputs(server))["stage"]["stream_id"] == again.stream_id
        pts = [received.pts for received in early.received]
        assert pts == sorted(set(pts)), f"one continuous stream across the reconnect: {pts[seen - 3 : seen + 3]}"

        async with server.http.delete(viewers[1].location) as response:
            assert response.status == 200
        assert (await outputs(server))["stage"]["viewers"] == 1
    finally:
        for client in [*publishers, *viewers]:
            await client.close()


async def test_whip_asking_for_a_model_this_server_does_not_run_is_409(server: RunningServer) -> None:
    offer = await offer_sdp()
    async with server.http.post(server.url("/api/whip/stage?model=sdxl"), data=offer, headers=SDP) as response:
        assert response.status == 409
        body = await response.json()
    assert body == {"error": "model not on offer", "detail": {"model": "sdxl", "on_offer": ["tiny"]}}
    assert server.app[live_keys.PEERS].sessions == {}


async def test_bad_whip_and_whep_requests_are_4xx_json_and_change_nothing(
    make_config: Callable[..., Config],
) -> None:
    running = await start_server(
        make_config(engine={"max_batch": 1}, server={"max_peers": 1}, outputs={"max_viewers": 1})
    )
    http, url = running.http, running.url
    peers, viewers = running.app[live_keys.PEERS], running.app[live_keys.VIEWERS]
    clients: list[Any] = []
    try:
        for path in ("/api/whip/stage", "/api/outputs/stage/whep"):
            async with http.post(url(path), json={"sdp": "v=0"}) as response:
                assert response.status == 415
                assert (await response.json())["error"] == "unsupported media type"
            async with http.post(url(path), data="hello", headers=SDP) as response:
                assert response.status == 400
            async with http.post(url(path), data="v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", headers=SDP) as response:
                assert response.status == 400, "aiortc refuses it: no ICE, no DTLS"
        for path in ("/api/whip/stage", "/api/outputs/stage/whep"):
            async with http.options(url(path)) as response:
                assert response.status == 204 and response.headers["Accept-Post"] == "application/sdp", path
        for path in ("/api/whip/latest", "/api/whip/bad!", "/api/outputs/bad!/whep"):
            async with http.post(url(path), data="v=0", headers=SDP) as response:
                assert response.status == 422
                assert (await response.json())["detail"][0]["field"] == "name"

        # A WHEP offer that takes no video (sound only) has nothing to play.
        pc = RTCPeerConnection()
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with http.post(url("/api/outputs/stage/whep"), data=pc.localDescription.sdp, headers=SDP) as response:
            assert response.status == 400
        await pc.close()

        async with http.get(url("/api/outputs/stage/whep/nope")) as response:
            assert response.status == 404
        for path in ("/api/whip/stage/nope/nope", "/api/outputs/stage/whep/nope"):
            async with http.delete(url(path)) as response:
                assert response.status == 404
            async with http.patch(
                url(path), data="a=candidate", headers={"Content-Type": "application/trickle-ice-sdpfrag"}
            ) as r:
                assert r.status == 404

        # The limits: publishers count against [server] max_peers, viewers against [outputs] max_viewers.
        clients.append(await whep_view(http, url("/api/outputs/stage/whep")))
        with pytest.raises(SdpRefused) as refused:
            clients.append(await whep_view(http, url("/api/outputs/stage/whep")))
        assert refused.value.status == 503 and "too many viewers" in refused.value.body
        clients.append(await whip_publish(http, url("/api/whip/stage"), receive=False))
        with pytest.raises(SdpRefused) as refused:
            clients.append(await whip_publish(http, url("/api/whip/other"), receive=False))
        assert refused.value.status == 503 and "server full" in refused.value.body
        # A session is deleted under its own name only, and only with the secret of its Location: its
        # stream id is public (GET /api/streams), so with the id alone anyone could hang it up.
        secret = clients[1].answer["location"].rsplit("/", 1)[-1]
        for path in (
            f"/api/whip/other/{clients[1].stream_id}/{secret}",
            f"/api/whip/stage/{clients[1].stream_id}",
            f"/api/whip/stage/{clients[1].stream_id}/{'0' * len(secret)}",
            f"/api/streams/{clients[1].stream_id}/{secret}",
        ):
            async with http.delete(url(path)) as response:
                assert response.status in (404, 405), path
        assert clients[1].stream_id in peers.sessions
        assert len(peers.sessions) == 1 and len(viewers.viewers) == 1
    finally:
        for client in clients:
            await client.close()
        await stop_server(running)


async def test_whip_and_whep_take_the_bearer_token(make_config: Callable[..., Config]) -> None:
    running = await start_server(make_config(engine={"max_batch": 1}, security={"api_token": "s3cret"}))
    clients: list[Any] = []
    try:
        for path in ("/api/whip/stage", "/api/outputs/stage/whep"):
            async with running.http.post(running.url(path), data="v=0", headers=SDP) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
        clients.append(await whip_publish(running.http, running.url("/api/whip/stage"), token="s3cret"))
        clients.append(await whep_view(running.http, running.url("/api/outputs/stage/whep"), token="s3cret"))
        await clients[1].wait_frames(3)
        async with running.http.delete(clients[0].answer["location"]) as response:
            assert response.status == 401, "hanging up needs the token too"
        headers = {"Authorization": "Bearer s3cret"}
        async with running.http.delete(clients[0].answer["location"], headers=headers) as response:
            assert response.status == 200
    finally:
        for client in clients:
            await client.close()
        await stop_server(running)


def without_candidates(sdp: str) -> str:
    """An offer as a trickling client POSTs it: before any candidate was gathered."""
    kept = [line for line in sdp.splitlines() if not line.startswith(("a=candidate", "a=end-of-candidates"))]
    return "".join(line + "\r\n" for line in kept)


def sdpfrag(sdp: str, ufrag: str | None = None) -> str:
    """The candidates of an offer as a trickle-ice-sdpfrag (RFC 8840), its ICE credentials or `ufrag`."""
    lines = sdp.splitlines()
    first = next(line for line in lines if line.startswith("a=ice-ufrag:"))
    pwd = next(line for line in lines if line.startswith("a=ice-pwd:"))
    media = next(line for line in lines if line.startswith("m="))
    mid = next(line for line in lines if line.startswith("a=mid:"))
    candidates = [line for line in lines if line.startswith("a=candidate")]
    head = [f"a=ice-ufrag:{ufrag}" if ufrag else first, pwd, media, mid]
    return "\r\n".join([*head, *candidates, "a=end-of-candidates"]) + "\r\n"


def host_ports(pc: RTCPeerConnection) -> set[int]:
    """The ports of the host candidates a peer connection was given for its (bundled) media."""
    transport = pc.getTransceivers()[0].receiver.transport.transport
    return {c.port for c in transport.getRemoteCandidates() if c.type == "host"}


async def test_candidates_trickle_in_by_patch_and_ice_restarts_are_refused(server: RunningServer) -> None:
    """RFC 9725 §4.3: a client that POSTs before gathering PATCHes its candidates; aiortc cannot restart ICE."""
    http, url = server.http, server.url
    publisher = RTCPeerConnection()
    publisher.addTransceiver(NumberedTrack(), direction="sendonly")
    viewer = RTCPeerConnection()
    viewer.addTransceiver("video", direction="recvonly")
    try:
        sessions = []
        for pc, path in ((publisher, "/api/whip/trickle"), (viewer, "/api/outputs/trickle/whep")):
            await pc.setLocalDescription(await pc.createOffer())
            offer = pc.localDescription.sdp
            async with http.post(url(path), data=without_candidates(offer), headers=SDP) as response:
                assert response.status == 201
                location, etag = response.headers["Location"], response.headers["ETag"]
                answer = await response.text()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            # WHIP's Location ends in its secret (/api/whip/{name}/{stream_id}/{secret}), WHEP's in the viewer.
            session_id = location.split("/")[4] if "whip" in path else location.rsplit("/", 1)[-1]
            server_pc = (
                server.app[live_keys.PEERS].sessions[session_id].pc
                if "whip" in path
                else server.app[live_keys.VIEWERS].viewers[session_id].pc
            )
            assert host_ports(server_pc) == set(), "the offer carried no candidates"
            wanted = {int(line.split()[5]) for line in offer.splitlines() if line.startswith("a=candidate")}

            # Wrong entity tag, wrong content type, then an ICE restart: refused, nothing added.
            headers = {"Content-Type": SDPFRAG, "If-Match": '"other"'}
            async with http.patch(url(location), data=sdpfrag(offer), headers=headers) as response:
                assert response.status == 412
            async with http.patch(url(location), data=sdpfrag(offer), headers=SDP) as response:
                assert response.status == 415
            headers = {"Content-Type": SDPFRAG, "If-Match": etag}
            async with http.patch(url(location), data=sdpfrag(offer, ufrag="restart"), headers=headers) as response:
                assert response.status == 422
                refusal = await response.json()
                assert (
                    refusal["error"] == "ICE restart not supported"
                    and "POST a new offer" in refusal["detail"][0]["message"]
                )
            assert host_ports(server_pc) == set()

            async with http.patch(url(location), data=sdpfrag(offer), headers=headers) as response:
                assert response.status == 204 and response.headers["ETag"] == etag
            assert host_ports(server_pc) == wanted
            sessions.append(session_id)

        stats = server.app[live_keys.PEERS].sessions[sessions[0]].stats
        await eventually(lambda: stats.frames_out >= 5, 20, what="the trickled publisher's frames")
        await eventually(lambda: viewer.connectionState == "connected", 20, what="the trickled viewer to connect")
    finally:
        await publisher.close()
        await viewer.close()


async def test_cross_origin_players_read_location_link_and_etag(make_config: Callable[..., Config]) -> None:
    """A WHEP player on another origin (cors_origins) must read where its session lives and its ICE servers."""
    ice = [{"urls": "stun:stun.example:3478"}]
    running = await start_server(
        make_config(engine={"max_batch": 1}, server={"cors_origins": ["http://player.example"], "ice_servers": ice})
    )
    origin = {"Origin": "http://player.example"}
    viewer = RTCPeerConnection()
    viewer.addTransceiver("video", direction="recvonly")
    try:
        preflight = {**origin, "Access-Control-Request-Method": "PATCH", "Access-Control-Request-Headers": "if-match"}
        async with running.http.options(running.url("/api/outputs/stage/whep"), headers=preflight) as response:
            assert response.status == 204
            assert "if-match" in response.headers["Access-Control-Allow-Headers"].lower()
        await viewer.setLocalDescription(await viewer.createOffer())
        headers = {**SDP, **origin}
        whep = running.url("/api/outputs/stage/whep")
        async with running.http.post(whep, data=viewer.localDescription.sdp, headers=headers) as response:
            assert response.status == 201
            assert response.headers["Access-Control-Allow-Origin"] == "http://player.example"
            exposed = {h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
            assert {"location", "link", "etag"} <= exposed
            assert response.headers["Link"].startswith("<stun:stun.example:3478>")
    finally:
        await viewer.close()
        await stop_server(running)
