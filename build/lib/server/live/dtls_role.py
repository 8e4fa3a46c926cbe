"""Every answer makes the server the DTLS server (`a=setup:passive`), whoever offers.

aiortc answers an `actpass` offer as the DTLS client, and as a client it offers only ECDSA cipher
suites: a peer with an RSA certificate (GStreamer's webrtcbin) then fails the handshake with "no
shared cipher". aiortc takes the server role when the offer says `a=setup:active`, and has no public
way to choose it otherwise; so an `actpass` offer (its sender takes either role) is read as `active`,
the answer says `passive`, and the offerer connects as the client. Offers that insist on a role keep it.
"""

from __future__ import annotations

import re

from aiortc import RTCSessionDescription

_ACTPASS = re.compile(r"^a=setup:actpass(?=\r?$)", re.MULTILINE)


def as_dtls_server(offer: RTCSessionDescription) -> RTCSessionDescription:
    """The offer as aiortc should read it so that its answer takes the DTLS server role."""
    return RTCSessionDescription(sdp=_ACTPASS.sub("a=setup:active", offer.sdp), type=offer.type)
