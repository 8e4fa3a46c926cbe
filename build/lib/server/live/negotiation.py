"""Offers from other software (OBS, GStreamer, players) over WHIP and WHEP: codecs and directions.

The page offers what the server asks for; other software offers what it has (OBS's WHIP output sends
H.264 only, with audio). So these connections take any video codec aiortc has, the configured one
first, and decline audio (an unread audio track would queue decoded frames without bound).
"""

from __future__ import annotations

from aiortc import RTCPeerConnection, RTCRtpCodecCapability, RTCRtpSender

from server.live.peers import codec_preferences


def any_video_codec(preferred: str) -> list[RTCRtpCodecCapability]:
    """Every video codec aiortc has (RTX left out, as for the page), `preferred` first."""
    first = codec_preferences(preferred)
    others = RTCRtpSender.getCapabilities("video").codecs
    return first + [c for c in others if c not in first and not c.mimeType.lower().endswith("/rtx")]


def open_to_other_software(pc: RTCPeerConnection, offer_sdp: str, preferred: str) -> None:
    """Before the offer is read: its video in any codec, its audio (if any) answered inactive."""
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "video":
            transceiver.setCodecPreferences(any_video_codec(preferred))
    if "\nm=audio" in offer_sdp.replace("\r\n", "\n"):
        pc.addTransceiver("audio", direction="inactive")


def video_direction(pc: RTCPeerConnection) -> str | None:
    """The negotiated direction of the video, from the server's side ("sendonly", "recvonly" ...)."""
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "video":
            return transceiver.currentDirection
    return None
