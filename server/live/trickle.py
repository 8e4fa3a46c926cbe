"""Trickle ICE for WHIP and WHEP sessions (RFC 9725 §4.3): candidates PATCHed as an SDP fragment.

A client that does not wait for ICE gathering POSTs its offer early and PATCHes its candidates as
they come (`application/trickle-ice-sdpfrag`, RFC 8840). aiortc takes remote candidates at any time
(`addIceCandidate`), so they are handed to the session's connection. aiortc itself does not trickle
(its answer carries every candidate already) and cannot restart ICE: a fragment with new ICE
credentials (a restart request) is refused with 422, as RFC 9725 asks of a session that trickles but
does not restart; the client POSTs a new offer instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiortc import RTCPeerConnection
from aiortc.sdp import candidate_from_sdp

TRICKLE_ICE_SDPFRAG = "application/trickle-ice-sdpfrag"
# What a trickle PATCH (on a WHIP or a WHEP session) may answer beside the session's own 404.
TRICKLE_ERRORS = {
    412: "If-Match is not the session's ETag",
    415: "not application/trickle-ice-sdpfrag",
    422: "an ICE restart (new ICE credentials), or candidates that do not parse",
}


class TrickleRejected(Exception):
    """A fragment that cannot be applied (malformed, or candidates for no media of the session)."""


class IceRestartRefused(Exception):
    """The fragment carries new ICE credentials: a restart, which aiortc cannot do."""


@dataclass
class SdpFragment:
    ufrag: str | None = None
    pwd: str | None = None
    candidates: list[tuple[str | None, int, str]] = field(default_factory=list)  # (mid, m-line index, candidate)
    complete: bool = False  # a=end-of-candidates


def parse_fragment(text: str) -> SdpFragment:
    """The ICE lines of a trickle-ice-sdpfrag body; session-level credentials apply to every m= line."""
    fragment = SdpFragment()
    mline, mid = -1, None
    for line in text.replace("\r\n", "\n").split("\n"):
        line = line.strip()
        if line.startswith("m="):
            mline, mid = mline + 1, None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        elif line.startswith("a=ice-ufrag:"):
            fragment.ufrag = line[len("a=ice-ufrag:") :]
        elif line.startswith("a=ice-pwd:"):
            fragment.pwd = line[len("a=ice-pwd:") :]
        elif line.startswith("a=candidate:"):
            fragment.candidates.append((mid, max(mline, 0), line[len("a=") :]))
        elif line == "a=end-of-candidates":
            fragment.complete = True
        elif line and not line.startswith(("a=", "m=", "c=")):
            raise TrickleRejected(f"not a trickle-ice-sdpfrag line: {line[:80]!r}")
    return fragment


def remote_ufrag(pc: RTCPeerConnection) -> str | None:
    """The ICE username fragment of the offer the session was made from."""
    description = pc.remoteDescription
    if description is None:
        return None
    for line in description.sdp.splitlines():
        if line.startswith("a=ice-ufrag:"):
            return line[len("a=ice-ufrag:") :].strip()
    return None


async def add_candidates(pc: RTCPeerConnection, fragment: SdpFragment) -> int:
    """Hand the fragment's candidates to the session's ICE; the number added. Raises for a restart."""
    current = remote_ufrag(pc)
    if fragment.ufrag is not None and current is not None and fragment.ufrag != current:
        raise IceRestartRefused(
            f"new ICE credentials (ufrag {fragment.ufrag!r}, the session's is {current!r}): ICE restarts are "
            "not supported; DELETE the session and POST a new offer"
        )
    candidates = []
    for mid, mline, line in fragment.candidates:
        try:
            candidate = candidate_from_sdp(line.split(":", 1)[1])
        except (IndexError, ValueError) as e:
            raise TrickleRejected(f"not an ICE candidate: {line[:120]!r}") from e
        candidate.sdpMid, candidate.sdpMLineIndex = mid, mline
        candidates.append(candidate)
    for candidate in candidates:
        await pc.addIceCandidate(candidate)
    if fragment.complete:
        await pc.addIceCandidate(None)
    return len(candidates)
