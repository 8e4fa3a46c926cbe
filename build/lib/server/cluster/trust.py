"""What a node believes of what it reads from Redis. Redis is shared, and whoever can write to it is
not thereby one of the nodes: an entry pointing the front at a fake worker got it the cluster's
token and people's SDP offers, a job record pointing outside the data dir got files read and
deleted. So a node entry counts only when it is well formed and, with a cluster secret (`[security]
api_token`, which every node shares), signed with it by the node that wrote it; a job record only
when its id is a job id and its paths lie in that job's folder.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import PurePosixPath
from typing import Any

from yarl import URL

from server.jobs.store import JOB_ID
from server.jobs.worker import JOBS_FOLDER

ROLES = frozenset({"front", "worker"})
SIGNATURE = "signature"


class Untrusted(ValueError):
    """A value read from Redis that no node of this cluster wrote: the message says what is wrong."""


def _digest(entry: dict[str, Any], secret: bytes) -> str:
    body = json.dumps({k: v for k, v in entry.items() if k != SIGNATURE}, sort_keys=True, separators=(",", ":"))
    return hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()


def signed(entry: dict[str, Any], secret: bytes) -> dict[str, Any]:
    """The node's own entry as it writes it: with its signature when the cluster has a secret."""
    return {**entry, SIGNATURE: _digest(entry, secret)} if secret else entry


def node_entry(raw: str | bytes, secret: bytes) -> dict[str, Any]:
    """A node's entry read from Redis, or `Untrusted` saying why it is not believed."""
    try:
        entry = json.loads(raw)
    except ValueError as e:
        raise Untrusted(f"not JSON ({e})") from e
    if not isinstance(entry, dict):
        raise Untrusted(f"not a JSON object but {type(entry).__name__}")
    for field in ("id", "instance", "role", "url"):
        if not isinstance(entry.get(field), str) or not entry[field]:
            raise Untrusted(f"no {field}")
    if entry["role"] not in ROLES:
        raise Untrusted(f"role {entry['role']!r}")
    url = URL(entry["url"])
    if url.scheme not in ("http", "https") or not url.host or url.path not in ("", "/") or url.query_string:
        raise Untrusted(f"url {entry['url']!r} is not a node's address")
    if secret:
        claimed = entry.get(SIGNATURE)
        if not isinstance(claimed, str) or not hmac.compare_digest(claimed, _digest(entry, secret)):
            raise Untrusted("not signed with the cluster's secret")
    return entry


def job_path(job_id: str, path: str) -> str:
    """A path from a job record: relative, inside `jobs/<id>/`, or `Untrusted`."""
    if not JOB_ID.fullmatch(job_id):
        raise Untrusted(f"job id {job_id!r}")
    parts = PurePosixPath(path).parts
    if len(parts) != 3 or parts[:2] != (JOBS_FOLDER, job_id) or parts[2] in ("..", ".") or "\\" in path:
        raise Untrusted(f"path {path!r} is not in job {job_id}'s folder")
    return path
