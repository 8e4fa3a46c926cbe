"""Requests forwarded to another node of a cluster, and its answer back as if this node gave it.

A front door relays what belongs to a worker (an offer, a stream's outputs, a job's result held
elsewhere). The request goes on with its method, path, query (a `?token=` taken off), body and
content headers; the cluster's token (every node shares `[security] api_token`) replaces the
caller's, which this node has checked already, and `Origin`/`Referer` stay behind (this node did
the cross-origin check). `X-Forwarded-For` carries the client on, for workers that list the front in
`[server] trusted_proxies`. The answer comes back with its status and headers; a streamed one
(MJPEG) is passed on as it arrives, for as long as both ends stay.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict

from server import keys
from server.http.errors import ApiError

# Request headers that describe the body or what the caller accepts: passed on.
FORWARDED = (hdrs.CONTENT_TYPE, hdrs.ACCEPT, hdrs.USER_AGENT, hdrs.IF_MATCH)  # If-Match: WHIP/WHEP PATCH
# Answer headers passed back (the rest are the hop's own: length, encoding, connection, date ...).
RETURNED = (
    hdrs.CONTENT_TYPE,
    hdrs.LOCATION,
    hdrs.LINK,
    hdrs.CACHE_CONTROL,
    hdrs.CONTENT_DISPOSITION,
    hdrs.RETRY_AFTER,
    hdrs.WWW_AUTHENTICATE,
    hdrs.ALLOW,
    hdrs.ETAG,
    "Accept-Post",
)
STREAMED = ("multipart/x-mixed-replace",)
CHUNK_BYTES = 64 * 1024


class NodeUnreachable(Exception):
    """The other node did not answer (gone, or too slow)."""


class Relay:
    """An HTTP client for the other nodes of the cluster, with its token and patience."""

    def __init__(self, here: str, token: str, timeout_s: float) -> None:
        self.here = here  # this node's own URL, never relayed to
        self._token = token
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # No overall timeout: a streamed answer lasts as long as its viewer; waits are bounded per call.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(self.timeout_s, 5.0))
        self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the relay is not started")
        return self._session

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self._token:
            headers[hdrs.AUTHORIZATION] = f"Bearer {self._token}"
        return headers

    async def json(self, method: str, url: str, body: Any = None, timeout_s: float | None = None) -> tuple[int, Any]:
        """A JSON call to another node: (status, decoded answer). Raises `NodeUnreachable`."""
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s):
                async with self.session.request(method, url, json=body, headers=self.headers()) as response:
                    return response.status, await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise NodeUnreachable(f"{method} {url}: {type(e).__name__}: {e}") from e

    async def text(self, url: str, accept: str = "", timeout_s: float | None = None) -> str:
        """A GET answered with text (Prometheus metrics); raises `NodeUnreachable` unless 200."""
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s):
                headers = self.headers({hdrs.ACCEPT: accept} if accept else None)
                async with self.session.get(url, headers=headers) as response:
                    if response.status != 200:
                        raise NodeUnreachable(f"GET {url}: {response.status}")
                    return await response.text()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise NodeUnreachable(f"GET {url}: {type(e).__name__}: {e}") from e

    async def forward(self, request: web.Request, base_url: str, body: bytes | None = None) -> web.StreamResponse:
        """`request` sent on to the node at `base_url`; its answer. Raises `NodeUnreachable`."""
        headers = self.headers({name: request.headers[name] for name in FORWARDED if name in request.headers})
        client = request.get(keys.CLIENT) or request.remote
        if client:
            headers["X-Forwarded-For"] = client
        query = [(name, value) for name, value in request.query.items() if name != "token"]
        url = base_url + request.rel_url.raw_path
        try:
            async with asyncio.timeout(self.timeout_s):
                upstream = await self.session.request(
                    request.method, url, params=query, data=body, headers=headers, allow_redirects=False
                )
        except (aiohttp.ClientError, TimeoutError) as e:
            raise NodeUnreachable(f"{request.method} {url}: {type(e).__name__}: {e}") from e
        try:
            answer_headers = CIMultiDict((name, value) for name, value in upstream.headers.items() if name in RETURNED)
            if upstream.content_type in STREAMED:
                return await _stream(request, upstream, answer_headers)
            try:
                async with asyncio.timeout(self.timeout_s):
                    payload = await upstream.read()
            except (aiohttp.ClientError, TimeoutError) as e:
                raise NodeUnreachable(f"{request.method} {url}: the answer stalled ({e})") from e
            return web.Response(status=upstream.status, body=payload, headers=answer_headers)
        finally:
            upstream.release()


async def _stream(
    request: web.Request, upstream: aiohttp.ClientResponse, headers: CIMultiDict[str]
) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status, headers=headers)
    await response.prepare(request)
    with contextlib.suppress(ConnectionError, aiohttp.ClientError):
        async for chunk in upstream.content.iter_chunked(CHUNK_BYTES):
            await response.write(chunk)
        await response.write_eof()
    return response


def unreachable(e: NodeUnreachable) -> ApiError:
    """What the caller gets when the node that holds what it asked for does not answer."""
    return ApiError(503, "node unreachable", str(e))
