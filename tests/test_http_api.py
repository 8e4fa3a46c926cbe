"""Bad input at the HTTP edge: clear 4xx JSON errors, nothing leaked, the server keeps serving."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch

from server import keys
from server.config import Config
from server.live import keys as live_keys
from server.testing.rtc_client import connect, offer_sdp
from server.testing.servers import RunningServer, start_server, stop_server
from server.testing.waiting import eventually


async def test_health_and_readiness(server: RunningServer) -> None:
    async with server.http.get(server.url("/health")) as response:
        assert response.status == 200
    async with server.http.get(server.url("/readyz")) as response:
        body = await response.json()
        assert response.status == 200
        assert body["state"] == "ready" and body["model"] == "tiny"
        assert (body["family"], body["default_steps"]) == ("sd-turbo", 1)
    async with server.http.get(server.url("/api/stats")) as response:
        engine = (await response.json())["engine"]
        assert (engine["model"], engine["family"]) == ("tiny", "sd-turbo")


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"not json", 400, "body is not valid JSON"),
        (b"[1, 2]", 400, "body must be a JSON object"),
        (b'{"sdp": "v=0", "type": "answer"}', 422, "invalid fields"),
        (b'{"type": "offer"}', 422, "invalid fields"),
        (b'{"sdp": "this is not sdp", "type": "offer"}', 400, "offer rejected"),
        (b'{"sdp": "v=0\\r\\nm=video 9 UDP/TLS/RTP/SAVPF 96\\r\\n", "type": "offer"}', 400, "offer rejected"),
    ],
)
async def test_bad_offers_are_refused_and_leave_no_peer(
    server: RunningServer, body: bytes, status: int, error: str
) -> None:
    async with server.http.post(
        server.url("/api/offer"), data=body, headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == status
        assert (await response.json())["error"] == error
    assert server.app[live_keys.PEERS].sessions == {}
    async with server.http.get(server.url("/health")) as response:
        assert response.status == 200


async def test_type_other_than_offer_is_400_or_422_naming_type(server: RunningServer) -> None:
    async with server.http.post(server.url("/api/offer"), json={"sdp": await offer_sdp(), "type": "pranswer"}) as r:
        body = await r.json()
    assert r.status == 422
    assert body["detail"][0]["field"] == "type"


async def test_an_offer_for_a_model_this_server_does_not_run_is_409_naming_its_model(server: RunningServer) -> None:
    offer = {"sdp": await offer_sdp(), "type": "offer", "model": "tiny-sdxl"}
    async with server.http.post(server.url("/api/offer"), json=offer) as response:
        assert response.status == 409
        body = await response.json()
    assert body == {"error": "model not on offer", "detail": {"model": "tiny-sdxl", "on_offer": ["tiny"]}}
    assert server.app[live_keys.PEERS].sessions == {}
    # Its spec or its family is taken.
    for model in ("tiny", "sd-turbo"):
        client = await connect(server.http, server.url("/api/offer"), model=model)
        await client.close()


async def test_oversized_offer_is_413(server: RunningServer) -> None:
    huge = {"sdp": "v=0\r\n" + "a=x\r\n" * 20000, "type": "offer"}
    async with server.http.post(server.url("/api/offer"), json=huge) as response:
        assert response.status == 413
        assert (await response.json())["error"] == "request body too large"


async def test_more_peers_than_max_is_503(make_config: Callable[..., Config]) -> None:
    running = await start_server(make_config(server={"max_peers": 1}))
    try:
        first = await connect(running.http, running.url("/api/offer"))
        try:
            async with running.http.post(
                running.url("/api/offer"), json={"sdp": await offer_sdp(), "type": "offer"}
            ) as response:
                assert response.status == 503
                assert (await response.json())["error"] == "server full"
            assert list(running.app[live_keys.PEERS].sessions) == [first.stream_id]
        finally:
            await first.close()
    finally:
        await stop_server(running)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"strength": 1.5}, "strength"),
        ({"strength": -0.1}, "strength"),
        ({"strength": "high"}, "strength"),
        ({"strength": True}, "strength"),
        ({"prompt": "x" * 501}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"seed": -1}, "seed"),
        ({"blend": 2}, "blend"),
        ({"num_inference_steps": 5}, "num_inference_steps"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 2.5}, "num_inference_steps"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_invalid_settings_are_422_naming_the_field(server: RunningServer, patch: dict, field: str) -> None:
    async with server.http.get(server.url("/api/settings")) as response:
        before = await response.json()
    async with server.http.patch(server.url("/api/settings"), json=patch) as response:
        body = await response.json()
    assert response.status == 422
    assert field in [item["field"] for item in body["detail"]]
    async with server.http.get(server.url("/api/settings")) as response:
        assert await response.json() == before


async def test_null_for_a_global_field_is_422(server: RunningServer) -> None:
    async with server.http.patch(server.url("/api/settings"), json={"strength": None, "seed": None}) as response:
        assert response.status == 422
        body = await response.json()
    # The one error shape: each bad field with its message and type.
    assert [(item["field"], item["type"]) for item in body["detail"]] == [
        ("seed", "value_error"),
        ("strength", "value_error"),
    ]


async def test_settings_round_trip_and_shorthands(server: RunningServer) -> None:
    async with server.http.patch(server.url("/api/settings"), json={"prompt": "ink", "strength": 1, "seed": 7}) as r:
        assert r.status == 200
        body = await r.json()
    assert (body["prompt"], body["strength"], body["seed"]) == ("ink", 1.0, 7)
    async with server.http.post(server.url("/api/prompt"), json={"prompt": "oil"}) as r:
        assert (await r.json())["prompt"] == "oil"
    async with server.http.post(server.url("/api/strength"), json={"strength": 0.25}) as r:
        assert (await r.json())["strength"] == 0.25
    async with server.http.post(server.url("/api/strength"), json={"strength": 3}) as r:
        assert r.status == 422
    async with server.http.get(server.url("/api/settings")) as r:
        body = await r.json()
    assert (body["prompt"], body["strength"]) == ("oil", 0.25)


async def test_steps_are_set_globally_and_null_returns_to_the_family_default(server: RunningServer) -> None:
    async with server.http.patch(server.url("/api/settings"), json={"num_inference_steps": 3}) as r:
        assert (r.status, (await r.json())["num_inference_steps"]) == (200, 3)
    async with server.http.patch(server.url("/api/settings"), json={"num_inference_steps": None}) as r:
        assert (r.status, (await r.json())["num_inference_steps"]) == (200, None)


async def test_unknown_stream_is_404(server: RunningServer) -> None:
    async with server.http.get(server.url("/api/streams/nope/settings")) as response:
        assert response.status == 404
    async with server.http.patch(server.url("/api/streams/nope/settings"), json={"strength": 0.1}) as response:
        assert response.status == 404
    async with server.http.delete(server.url("/api/streams/nope")) as response:
        assert response.status == 404


async def test_model_that_cannot_load_makes_readyz_503_with_the_fix(make_config: Callable[..., Config]) -> None:
    running = await start_server(make_config(model={"id": "/nonexistent/model-folder"}), ready=False)
    try:

        async def failed() -> tuple[int, dict[str, Any]] | None:
            async with running.http.get(running.url("/readyz")) as response:
                body: dict[str, Any] = await response.json()
            return (response.status, body) if body["state"] == "failed" else None

        status, body = await eventually(failed, 10, what="the engine in state failed")
        assert status == 503
        assert "--model tiny" in body["reason"]
        async with running.http.post(
            running.url("/api/offer"), json={"sdp": await offer_sdp(), "type": "offer"}
        ) as response:
            assert response.status == 503
            assert (await response.json())["error"] == "model not ready"
    finally:
        await stop_server(running)


async def test_engine_cpu_threads_sets_the_model_threads_thread_count(make_config: Callable[..., Config]) -> None:
    default = torch.get_num_threads()
    wanted = 1 if default != 1 else 2
    running = await start_server(make_config(engine={"cpu_threads": wanted, "max_batch": 1}))
    try:
        await connect_and_close(running)  # the model runs with it
        assert running.app[keys.ENGINE].engine.cpu_threads == wanted
        assert torch.get_num_threads() == default  # the event loop's thread is left alone
    finally:
        await stop_server(running)


async def test_engine_on_cpu_leaves_a_core_to_the_codecs_by_default(server: RunningServer) -> None:
    await connect_and_close(server)
    cores = len(os.sched_getaffinity(0))
    assert server.app[keys.ENGINE].engine.cpu_threads == max(1, cores - 1)


async def connect_and_close(server: RunningServer) -> None:
    client = await connect(server.http, server.url("/api/offer"))
    try:
        await client.wait_frames(3)
    finally:
        await client.close()
