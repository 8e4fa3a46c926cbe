"""Asking for a model: an offer's `model`, or a name's saved `model` setting, against a single server
running the tiny model (real aiortc peers, WHIP included). What it runs is taken; anything else is a
409 naming what is on offer, and nothing starts. The cluster's placement is in tests/test_cluster.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import pytest

from server.config import Config
from server.testing.rtc_client import SdpRefused, connect, whip_publish
from server.testing.servers import RunningServer, start_server, stop_server


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    running = await start_server(make_config(engine={"max_batch": 2}))
    yield running
    await stop_server(running)


async def streams(server: RunningServer) -> list[str]:
    status, body = await server.call("GET", "/api/streams")
    assert status == 200
    return [stream["id"] for stream in body["streams"]]


async def test_an_offer_gets_the_model_it_asks_for_or_a_409_naming_what_is_on_offer(server: RunningServer) -> None:
    client = await connect(server.http, server.url("/api/offer"), size=(64, 64), model="tiny")
    try:
        await client.wait_frames(2)
    finally:
        await client.close()

    with pytest.raises(SdpRefused) as refused:
        await connect(server.http, server.url("/api/offer"), size=(64, 64), model="stabilityai/sdxl-turbo")
    assert refused.value.status == 409
    answer = json.loads(refused.value.body)
    assert answer["error"] == "model not on offer"
    assert answer["detail"]["model"] == "stabilityai/sdxl-turbo"
    assert answer["detail"]["on_offer"] == ["tiny"]
    assert await streams(server) == []


async def test_a_names_model_setting_places_its_offers_and_its_whip_encoder(server: RunningServer) -> None:
    status, named = await server.call("PATCH", "/api/outputs/stage/settings", {"model": "some/other-model"})
    assert status == 200 and named["overrides"] == {"model": "some/other-model"}
    with pytest.raises(SdpRefused) as by_offer:
        await connect(server.http, server.url("/api/offer"), size=(64, 64), name="stage")
    with pytest.raises(SdpRefused) as by_whip:
        await whip_publish(server.http, server.url("/api/whip/stage"))
    for refused in (by_offer.value, by_whip.value):
        assert refused.status == 409 and json.loads(refused.body)["detail"]["model"] == "some/other-model"
    assert await streams(server) == []

    # The offer's own ask wins over the name's; another name is not affected; cleared, any model will do.
    own = await connect(server.http, server.url("/api/offer"), size=(64, 64), name="stage", model="tiny")
    other = await connect(server.http, server.url("/api/offer"), size=(64, 64), name="floor")
    try:
        await own.wait_frames(2)
        await other.wait_frames(2)
    finally:
        await own.close()
        await other.close()
    status, _ = await server.call("PATCH", "/api/outputs/stage/settings", {"model": None})
    assert status == 200
    publisher = await whip_publish(server.http, server.url("/api/whip/stage"))
    await publisher.close()


async def test_a_model_ask_is_refused_where_it_cannot_place_anything(server: RunningServer) -> None:
    # A running stream is placed already: its own settings (HTTP, an offer's settings) take no model.
    client = await connect(server.http, server.url("/api/offer"), size=(64, 64))
    try:
        status, body = await server.call("PATCH", f"/api/streams/{client.stream_id}/settings", {"model": "tiny"})
        assert status == 422 and [item["field"] for item in body["detail"]] == ["model"]
        assert "places new streams" in body["detail"][0]["message"]
    finally:
        await client.close()
    before = await streams(server)  # the closed client's stream may linger a moment: nothing may join it
    with pytest.raises(SdpRefused) as in_settings:
        await connect(server.http, server.url("/api/offer"), size=(64, 64), settings={"model": "tiny"})
    refusal = json.loads(in_settings.value.body)
    assert in_settings.value.status == 422 and refusal["detail"][0]["field"] == "settings.model"
    for bad in ("", "two\nlines", 7):
        status, body = await server.call("PATCH", "/api/outputs/stage/settings", {"model": bad})
        assert status == 422 and body["detail"][0]["field"] == "model", (bad, body)
    # Global: every new stream without an ask of its own asks for it.
    status, settings = await server.call("PATCH", "/api/settings", {"model": "elsewhere"})
    assert status == 200 and settings["model"] == "elsewhere"
    with pytest.raises(SdpRefused) as by_global:
        await connect(server.http, server.url("/api/offer"), size=(64, 64))
    assert by_global.value.status == 409
    assert set(await streams(server)) <= set(before)
    status, settings = await server.call("PATCH", "/api/settings", {"model": None})  # null: any model again
    assert status == 200 and settings["model"] is None
    again = await connect(server.http, server.url("/api/offer"), size=(64, 64))
    await again.close()
