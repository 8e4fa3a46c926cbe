"""Request bodies as networks deliver them: in pieces, stalled, chunked, too deep, too long, mislabelled;
and unexpected failures as JSON 500s with an id to find them in the log."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server import keys
from server.bounded_json import MAX_INT_DIGITS, MAX_JSON_DEPTH, parse_json
from server.config import Config
from server.http.errors import error_middleware
from server.testing.hostile_json import HOSTILE_JSON, PARSES
from server.testing.rtc_client import connect
from server.testing.servers import RunningServer, start_server, stop_server
from server.testing.waiting import eventually

BODY_TIMEOUT_S = 1.5
# How long the client sits between the two halves of a body: a Wi-Fi hiccup, well inside BODY_TIMEOUT_S.
NETWORK_PAUSE_S = 0.2


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    running = await start_server(
        make_config(server={"body_timeout_s": BODY_TIMEOUT_S}, engine={"warmup": False}), ready=False
    )
    yield running
    await stop_server(running)


async def raw_exchange(server: RunningServer, head: str, parts: list[bytes]) -> tuple[int, dict[str, Any]]:
    """Send `head` and then each of `parts` as a write of its own (pausing between), read the whole answer."""
    reader, writer = await asyncio.open_connection(server.server.host, server.server.port)
    try:
        writer.write(head.replace("\n", "\r\n").encode() + b"\r\n")
        for index, part in enumerate(parts):
            if index:
                await asyncio.sleep(NETWORK_PAUSE_S)  # the network stalling, not a wait for the server
            writer.write(part)
            await writer.drain()
        # The answer's head, then its body by Content-Length: a server lingering for the rest of a
        # refused body closes only later.
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        body = await asyncio.wait_for(reader.readexactly(length), 30)
    finally:
        writer.close()
        await writer.wait_closed()
    return int(head.split()[1]), json.loads(body)


def post_head(path: str, length: int | None, content_type: str = "application/json") -> str:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"POST {path} HTTP/1.1\nHost: localhost\nConnection: close\nContent-Type: {content_type}\n{framing}\n"


async def settings(server: RunningServer) -> dict[str, Any]:
    async with server.http.get(server.url("/api/settings")) as response:
        return dict(await response.json())


async def test_a_body_that_arrives_in_two_writes_is_read_whole(server: RunningServer) -> None:
    body = json.dumps({"prompt": "sent in two pieces"}).encode()
    status, answer = await raw_exchange(server, post_head("/api/prompt", len(body)), [body[:7], body[7:]])
    assert (status, answer["prompt"]) == (200, "sent in two pieces")


async def test_a_chunked_body_in_pieces_is_read_whole(server: RunningServer) -> None:
    body = json.dumps({"strength": 0.31}).encode()
    chunks = [f"{len(piece):x}\r\n".encode() + piece + b"\r\n" for piece in (body[:5], body[5:])]
    status, answer = await raw_exchange(server, post_head("/api/strength", None), [*chunks, b"0\r\n\r\n"])
    assert (status, answer["strength"]) == (200, 0.31)


async def test_a_body_that_never_comes_gets_408_and_changes_nothing(server: RunningServer) -> None:
    before = await settings(server)
    body = json.dumps({"prompt": "never finished"}).encode()
    status, answer = await raw_exchange(server, post_head("/api/prompt", len(body) + 100), [body])
    assert status == 408
    assert answer["error"] == "request body timed out"
    assert answer["detail"]["received_bytes"] == len(body)
    assert await settings(server) == before


async def test_bodies_past_the_limit_are_413_declared_or_chunked(server: RunningServer) -> None:
    too_big = server.app[keys.CONFIG].server.max_body_kb * 1024 + 1
    status, answer = await raw_exchange(server, post_head("/api/prompt", too_big), [])
    assert (status, answer["error"]) == (413, "request body too large")
    chunk = b"x" * 4096
    chunks = [f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"] * (too_big // len(chunk) + 1)
    status, answer = await raw_exchange(server, post_head("/api/prompt", None), [b"".join(chunks) + b"0\r\n\r\n"])
    assert (status, answer["error"]) == (413, "request body too large")


@pytest.mark.parametrize(
    "body",
    [
        b'{"prompt": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'{"a":' * 1200 + b"1" + b"}" * 1200,
        b'{"seed": ' + b"9" * 5000 + b"}",
        b'{"seed": -' + b"1" * (MAX_INT_DIGITS + 1) + b"}",
        b'{"strength": NaN}',
        b'{"strength": Infinity}',
        b'{"prompt": "\xff\xfe"}',
    ],
    ids=["1000-deep-arrays", "1200-deep-objects", "5000-digits", "33-digits", "nan", "infinity", "bad-utf8"],
)
async def test_json_beyond_the_bounds_is_400_and_changes_nothing(server: RunningServer, body: bytes) -> None:
    before = await settings(server)
    async with server.http.patch(
        server.url("/api/settings"), data=body, headers={"Content-Type": "application/json"}
    ) as response:
        answer = await response.json()
    assert response.status == 400, answer
    assert answer["error"] == "body is not valid JSON"
    assert await settings(server) == before


def test_json_within_the_bounds_parses() -> None:
    nested: Any = 1
    for _ in range(MAX_JSON_DEPTH):
        nested = [nested]
    assert parse_json(json.dumps(nested).encode()) == nested
    # Brackets inside strings are text, not nesting.
    assert parse_json(b'{"prompt": "' + b"[" * 500 + b'"}') == {"prompt": "[" * 500}
    assert parse_json(b'{"seed": 4294967295, "x": -1.5e3}') == {"seed": 4294967295, "x": -1500.0}


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None]
)
async def test_json_routes_want_application_json(server: RunningServer, content_type: str | None) -> None:
    before = await settings(server)
    headers = {"Content-Type": content_type} if content_type else {}
    async with server.http.post(
        server.url("/api/prompt"), data=b'{"prompt": "smuggled"}', headers=headers, skip_auto_headers=["Content-Type"]
    ) as response:
        answer = await response.json()
    assert response.status == 415
    assert answer["error"] == "body must be application/json"
    assert await settings(server) == before
    async with server.http.post(
        server.url("/api/prompt"), data=b'{"prompt": "labelled"}', headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 200


async def test_an_unexpected_exception_is_a_json_500_with_the_traceback_logged_under_its_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise ZeroDivisionError("the handler divided by zero")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/api/broken", broken)
    app.router.add_get("/broken", broken)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/api/broken", "/broken"):
                with caplog.at_level(logging.ERROR, logger="server.http.errors"):
                    async with http.get(server.make_url(path)) as response:
                        answer = await response.json()
                assert response.status == 500
                assert answer["error"] == "internal" and len(answer["id"]) == 12
                record = caplog.records[-1]
                assert answer["id"] in record.getMessage()
                assert record.exc_info is not None and record.exc_info[0] is ZeroDivisionError
    finally:
        await server.close()


@pytest.mark.parametrize("name", HOSTILE_JSON)
def test_a_megabyte_of_hostile_json_is_refused_or_parsed(name: str) -> None:
    # How long it takes is `python -m bench.json_check` (make bench): under 100 ms each here.
    if name in PARSES:
        assert isinstance(parse_json(HOSTILE_JSON[name]), list)
    else:
        with pytest.raises(ValueError):
            parse_json(HOSTILE_JSON[name])


async def test_a_hostile_body_at_the_size_limit_keeps_the_event_loop_serving(server: RunningServer) -> None:
    limit = server.app[keys.CONFIG].server.max_body_kb * 1024
    body = b'{"prompt": "' + b'\\"' * ((limit - 12) // 2)
    assert len(body) <= limit
    # The server shares this test's event loop: a ticker standing in for a peer's frames (30 a second)
    # records the longest gap between its ticks while the body is judged.
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(1 / 30)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    try:
        await asyncio.sleep(0.1)
        started = time.perf_counter()
        status, answer = await raw_exchange(server, post_head("/api/prompt", len(body)), [body])
        took = time.perf_counter() - started
        await asyncio.sleep(0.1)
    finally:
        ticking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticking
    assert (status, answer["error"]) == (400, "body is not valid JSON")
    # Before, ~8 s; the margins are for a CPU shared with other work.
    assert took < 1.0, f"answered after {took:.2f} s"
    assert max(gaps) < 1.0, f"the event loop stalled {max(gaps):.2f} s"


@pytest.mark.parametrize(
    ("method", "path", "content_type"),
    [
        ("PATCH", "/api/settings", "application/json"),
        ("POST", "/api/strength", "application/json"),
        ("POST", "/api/presets", "application/json"),
        ("POST", "/api/offer", "application/json"),
        ("POST", "/api/jobs", "multipart/form-data; boundary=x"),
        ("POST", "/api/whip/stage", "application/sdp"),
        ("POST", "/api/outputs/stage/whep", "application/sdp"),
    ],
)
async def test_a_body_its_content_encoding_does_not_describe_is_400(
    server: RunningServer, method: str, path: str, content_type: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = await settings(server)
    headers = {"Content-Encoding": "gzip", "Content-Type": content_type}
    with caplog.at_level(logging.ERROR):
        async with server.http.request(method, server.url(path), data=b'{"strength": 0.9}', headers=headers) as r:
            answer = await r.json()
    assert (r.status, answer["error"]) == (400, "request body cannot be decoded"), answer
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR], "no traceback logged"
    assert await settings(server) == before


async def test_a_gzipped_body_is_read(server: RunningServer) -> None:
    body = gzip.compress(json.dumps({"strength": 0.35}).encode())
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    async with server.http.post(server.url("/api/strength"), data=body, headers=headers) as response:
        assert response.status == 200
        assert (await response.json())["strength"] == 0.35


async def test_a_peer_keeps_its_frames_through_hostile_json_on_its_data_channel_and_over_http(
    make_config: Callable[..., Config],
) -> None:
    running = await start_server(make_config(engine={"max_batch": 1}))
    client = await connect(running.http, running.url("/api/offer"), negotiate_channel=True)
    try:
        channel = client.channel
        assert channel is not None
        replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        channel.on("message", lambda message: replies.put_nowait(json.loads(message)))
        await eventually(lambda: channel.readyState == "open", 5, what="the data channel open")
        await client.wait_frames(3)
        hostile = b'{"prompt": "' + b'\\"' * 30_000  # ~60 KB: within the body limit and an SCTP message
        started = time.perf_counter()
        first = len(client.received)
        channel.send(hostile.decode())
        reply = await asyncio.wait_for(replies.get(), 5)
        assert reply["type"] == "error" and time.perf_counter() - started < 1.0
        status, _ = await raw_exchange(running, post_head("/api/prompt", len(hostile)), [hostile])
        assert status == 400
        await client.wait_frames(3, timeout=10)
        arrivals = [frame.at for frame in client.received[first - 1 :]]
        gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
        assert max(gaps) < 2.0, f"the stream stalled {max(gaps):.1f} s"
    finally:
        await client.close()
        await stop_server(running)
