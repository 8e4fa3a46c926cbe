"""A second WebRTC stack for interop tests: GStreamer's webrtcbin publishing over WHIP and playing over WHEP.

Run by Debian's own Python (`/usr/bin/python3`, where python3-gst-1.0 lives), never imported by the
server: only the standard library and GObject introspection here. It sends a complete offer (ICE
gathered first: the server does not trickle), prints one JSON line per event on stdout
(`answered`, `connected`, `frames`, `done`, or `error` with a reason) and hangs up with DELETE.

    /usr/bin/python3 gst_webrtc_client.py whip http://127.0.0.1:8080/api/whip/stage --seconds 3
    /usr/bin/python3 gst_webrtc_client.py whep http://127.0.0.1:8080/api/outputs/stage/whep --frames 30
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

VP8_CAPS = "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000"
PUBLISH = (
    "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 ! videoconvert"
    f" ! vp8enc deadline=1 keyframe-max-dist=30 ! rtpvp8pay ! {VP8_CAPS} ! webrtcbin name=peer bundle-policy=max-bundle"
)


def say(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class Client:
    def __init__(self, mode: str, url: str, seconds: float, frames: int, token: str | None) -> None:
        self.mode, self.url, self.seconds, self.frames, self.token = mode, url, seconds, frames, token
        self.loop = GLib.MainLoop()
        if mode == "whip":
            self.pipeline = Gst.parse_launch(PUBLISH)
            self.peer = self.pipeline.get_by_name("peer")
        else:
            self.pipeline = Gst.Pipeline.new("play")
            self.peer = Gst.ElementFactory.make("webrtcbin", "peer")
            self.peer.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
            self.pipeline.add(self.peer)
        self.location: str | None = None
        self.received = 0
        self.failed: str | None = None
        direction = GstWebRTC.WebRTCRTPTransceiverDirection
        if mode == "whep":
            self.peer.emit("add-transceiver", direction.RECVONLY, Gst.Caps.from_string(VP8_CAPS))
            self.peer.connect("pad-added", self.on_pad)
        self.peer.connect("on-negotiation-needed", self.on_negotiation_needed)
        self.peer.connect("notify::ice-gathering-state", self.on_gathering)
        self.peer.connect("notify::connection-state", self.on_connection)
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self.on_error)

    def run(self) -> int:
        self.pipeline.set_state(Gst.State.PLAYING)
        GLib.timeout_add_seconds(30, self.fail, "timed out")
        self.loop.run()
        self.pipeline.set_state(Gst.State.NULL)
        self.hang_up()
        if self.failed:
            say("error", reason=self.failed)
            return 1
        say("done", frames=self.received)
        return 0

    # -- negotiation: offer, gather every candidate, POST, answer ------------------------------

    def on_negotiation_needed(self, peer: Gst.Element) -> None:
        if self.mode == "whip":
            for index in range(8):
                transceiver = peer.emit("get-transceiver", index)
                if transceiver is None:
                    break
                transceiver.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
        peer.emit("create-offer", None, Gst.Promise.new_with_change_func(self.on_offer, None))

    def on_offer(self, promise: Gst.Promise, _: object) -> None:
        promise.wait()
        reply = promise.get_reply()  # held: the offer lives in it, and PyGObject frees an unnamed temporary
        offer = reply.get_value("offer")
        self.peer.emit("set-local-description", offer, Gst.Promise.new())

    def on_gathering(self, peer: Gst.Element, _: object) -> None:
        if peer.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            GLib.idle_add(self.post_offer)

    def post_offer(self) -> bool:
        offer = self.peer.get_property("local-description").sdp.as_text()
        headers = {"Content-Type": "application/sdp"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url, data=offer.encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answer, status = response.read().decode(), response.status
                self.location = urllib.parse.urljoin(self.url, response.headers["Location"])
        except OSError as e:
            self.fail(f"POST failed: {e}")
            return False
        setup = [line for line in answer.splitlines() if line.startswith("a=setup:")]
        say("answered", status=status, location=self.location, setup=sorted(set(setup)))
        _, message = GstSdp.SDPMessage.new_from_text(answer)
        description = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
        self.peer.emit("set-remote-description", description, Gst.Promise.new())
        return False

    def on_connection(self, peer: Gst.Element, _: object) -> None:
        state = peer.get_property("connection-state")
        states = GstWebRTC.WebRTCPeerConnectionState
        if state == states.CONNECTED:
            say("connected")
            if self.mode == "whip":
                GLib.timeout_add(int(self.seconds * 1000), self.loop.quit)
        elif state == states.FAILED:
            self.fail("the connection failed (DTLS or ICE)")

    # -- playing: decode what comes in and count frames ----------------------------------------

    def on_pad(self, peer: Gst.Element, pad: Gst.Pad) -> None:
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        decode = Gst.parse_bin_from_description(
            "rtpvp8depay ! vp8dec ! videoconvert ! fakesink name=sink signal-handoffs=true sync=false", True
        )
        decode.get_by_name("sink").connect("handoff", self.on_frame)
        self.pipeline.add(decode)
        decode.sync_state_with_parent()
        pad.link(decode.get_static_pad("sink"))

    def on_frame(self, *_: object) -> None:
        self.received += 1
        if self.received == self.frames:
            say("frames", frames=self.received)
            GLib.idle_add(self.loop.quit)

    # -- endings --------------------------------------------------------------------------------

    def on_error(self, _: Gst.Bus, message: Gst.Message) -> None:
        error, _debug = message.parse_error()
        self.fail(f"pipeline error: {error.message}")

    def fail(self, reason: str) -> bool:
        self.failed = self.failed or reason
        self.loop.quit()
        return False

    def hang_up(self) -> None:
        if self.location is None:
            return
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        request = urllib.request.Request(self.location, headers=headers, method="DELETE")
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except OSError as e:
            say("hang-up failed", reason=str(e))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("whip", "whep"))
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=3.0, help="whip: how long to publish once connected")
    parser.add_argument("--frames", type=int, default=30, help="whep: how many decoded frames to wait for")
    parser.add_argument("--token", help="the Bearer token ([security] api_token)")
    args = parser.parse_args()
    Gst.init(None)
    return Client(args.mode, args.url, args.seconds, args.frames, args.token).run()


if __name__ == "__main__":
    sys.exit(main())
