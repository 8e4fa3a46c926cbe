"""Who this node is in the cluster: its name, this run's instance, its role and where others reach it."""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

from server.config import Config


@dataclass(frozen=True)
class NodeIdentity:
    id: str  # the node's name: stable across restarts (`[cluster] node_id`, or <hostname>-<port>)
    role: str  # "front" or "worker"
    url: str  # where the other nodes reach its HTTP API
    host: str  # the machine
    instance: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # this run of it
    pid: int = field(default_factory=os.getpid)
    started: float = field(default_factory=time.time)

    @classmethod
    def from_config(cls, config: Config) -> NodeIdentity:
        cluster, server = config.cluster, config.server
        machine = socket.gethostname()
        scheme = "https" if server.tls_cert else "http"
        url = cluster.advertise_url or f"{scheme}://{_reachable(server.host)}:{server.port}"
        return cls(
            id=cluster.node_id or f"{machine}-{server.port}",
            role=cluster.role,
            url=url.rstrip("/"),
            host=machine,
        )


def _reachable(host: str) -> str:
    """The address other machines reach a listener on `host` at: the outgoing interface's for a wildcard."""
    if host not in ("", "0.0.0.0", "::"):
        return f"[{host}]" if ":" in host else host
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, the route picks the interface
        return str(probe.getsockname()[0])
    return "127.0.0.1"
