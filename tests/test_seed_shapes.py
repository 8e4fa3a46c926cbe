"""Clients written against the seed systems: their paths, names and shapes are taken as well."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from server import keys
from server.config import Config
from server.testing.clips import make_image
from server.testing.servers import RunningServer, start_server, stop_server
from server.testing.waiting import eventually


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    running = await start_server(make_config(engine={"warmup": False}))
    yield running
    await stop_server(running)


async def test_probe_aliases_and_model_loaded(server: RunningServer) -> None:
    for path in ("/health", "/api/health"):
        status, body = await server.call("GET", path)
        assert (status, body) == (200, {"status": "ok", "model_loaded": True})
    for path in ("/readyz", "/api/readyz"):
        status, body = await server.call("GET", path)
        assert status == 200 and body["state"] == "ready"


async def test_collection_routes_take_a_trailing_slash(server: RunningServer) -> None:
    for path in ("/api/presets/", "/api/jobs/", "/api/streams/"):
        status, _ = await server.call("GET", path)
        assert status == 200, path
    seed_example = {"id": "slash_look", "name": "Slash", "category": "x", "prompt_template": "{prompt}, ink"}
    status, body = await server.call("POST", "/api/presets/", seed_example)
    assert status == 201, body


async def test_the_seed_preset_example_is_created(server: RunningServer) -> None:
    example = {
        "id": "my_cyberpunk",
        "name": "My cyberpunk",
        "category": "custom",
        "prompt_template": "{prompt}, cyberpunk city, neon",
        "parameters": {"cfg_scale": 1.5, "strength": 0.7, "seed": 9},
    }
    status, preset = await server.call("POST", "/api/presets", example)
    assert status == 201, preset
    assert preset["template"] == "{prompt}, cyberpunk city, neon"
    assert (preset["guidance_scale"], preset["strength"], preset["seed"]) == (1.5, 0.7, 9)
    assert "prompt_template" not in preset and "parameters" not in preset
    status, body = await server.call("GET", "/api/presets/my_cyberpunk")
    assert status == 200 and body == {**preset, "available": True, "unavailable_reason": None}
    for bad in (
        {**example, "id": "other", "template": "{prompt}"},  # both names for the template
        {**example, "id": "other2", "parameters": {"cfg_scale": 99}},
        {**example, "id": "other3", "parameters": {"steps": 4}},
    ):
        status, body = await server.call("POST", "/api/presets", bad)
        assert status == 422, bad


async def test_preview_fills_the_template_without_touching_the_live_look(server: RunningServer) -> None:
    _, before = await server.call("GET", "/api/settings")
    for body in ({"user_prompt": "a red fox"}, {"prompt": "a red fox"}):
        status, preview = await server.call("POST", "/api/presets/anime/preview", body)
        assert status == 200, preview
        assert preview["prompt"].startswith("anime illustration of a red fox, ")
        assert preview["subject"] == "a red fox" and preview["preset"] == "anime"
        assert preview["parameters"]["cfg_scale"] == preview["parameters"]["guidance_scale"]
        assert {"strength", "seed"} <= preview["parameters"].keys() and "negative_prompt" in preview
    status, preview = await server.call("POST", "/api/presets/anime/preview")
    assert status == 200 and "a person" in preview["prompt"]
    assert (await server.call("POST", "/api/presets/nope/preview", {"prompt": "x"}))[0] == 404
    assert (await server.call("POST", "/api/presets/anime/preview", {"user_prompt": 3}))[0] == 422
    assert (await server.call("GET", "/api/settings"))[1] == before


async def test_apply_takes_the_seed_path_and_user_prompt(server: RunningServer) -> None:
    for path, body in (
        ("/api/presets/apply/anime", {"user_prompt": "a red fox"}),
        ("/api/presets/anime/apply", {"prompt": "a grey wolf"}),
    ):
        status, applied = await server.call("POST", path, body)
        assert status == 200, applied
        _, settings = await server.call("GET", "/api/settings")
        assert applied["subject"] == body.get("user_prompt", body.get("prompt"))
        assert settings["prompt"].startswith(f"anime illustration of {applied['subject']}, ")
    assert (await server.call("POST", "/api/presets/apply/nope", {"user_prompt": "x"}))[0] == 404
    assert (await server.call("POST", "/api/presets/apply/anime", {"user_prompt": 3}))[0] == 422


async def test_jobs_list_takes_skip(server: RunningServer) -> None:
    form_ids = []
    for _ in range(2):
        form = aiohttp.FormData()
        form.add_field("file", make_image("png"), filename="a.png", content_type="image/png")
        async with server.http.post(server.url("/api/jobs"), data=form) as response:
            form_ids.append((await response.json())["id"])
    status, page = await server.call("GET", "/api/jobs?skip=1&limit=5")
    assert status == 200 and page["offset"] == 1
    assert [job["id"] for job in page["jobs"]] == [form_ids[0]]
    assert (await server.call("GET", "/api/jobs?skip=1&offset=1"))[0] == 422  # one or the other


async def test_random_prompts_are_composed_with_their_components(server: RunningServer) -> None:
    status, body = await server.call("GET", "/api/suggestions/random?count=4&seed=3")
    assert status == 200 and len(body["suggestions"]) == 4
    for item in body["suggestions"]:
        components = item["components"]
        assert set(components) == {"subject", "style", "lighting", "quality"}
        assert item["prompt"] == ", ".join(components[name] for name in ("subject", "style", "lighting", "quality"))


async def test_every_event_carries_an_iso_utc_timestamp(server: RunningServer) -> None:
    async with server.http.ws_connect(server.url("/api/events")) as events:
        await eventually(lambda: server.app[keys.EVENTS].listeners == 1)
        await server.call("POST", "/api/strength", {"strength": 0.4})
        message = await asyncio.wait_for(events.receive(), 10)
    event = json.loads(message.data)
    assert event["ts"].endswith("Z")
    sent = datetime.datetime.fromisoformat(event["ts"])
    assert sent.tzinfo is not None
    assert abs((datetime.datetime.now(datetime.UTC) - sent).total_seconds()) < 60


async def test_strict_get_routes_take_the_token_in_the_query(make_config: Callable[..., Config]) -> None:
    running = await start_server(make_config(engine={"warmup": False}, security={"api_token": "t0ken"}))
    try:
        for path in (
            "/api/jobs?limit=5",
            "/api/presets",
            "/api/suggestions/autocomplete?query=neo",
            "/api/suggestions/random?count=2",
        ):
            status, body = await running.call("GET", f"{path}{'&' if '?' in path else '?'}token=t0ken")
            assert status == 200, (path, body)
        status, body = await running.call("GET", "/api/suggestions/random?token=t0ken&cuont=2")
        assert status == 422 and [error["field"] for error in body["detail"]] == ["cuont"], "others still refused"
    finally:
        await stop_server(running)


async def test_control_characters_in_prompts_are_refused_naming_the_field(server: RunningServer) -> None:
    _, before = await server.call("GET", "/api/settings")
    for method, path, body, field in (
        ("PATCH", "/api/settings", {"prompt": "a fox\x1b[2J"}, "prompt"),
        ("PATCH", "/api/settings", {"negative_prompt": "blur\nINFO forged"}, "negative_prompt"),
        ("POST", "/api/presets/anime/apply", {"prompt": "a fox\r\n"}, "prompt"),
        ("POST", "/api/presets/anime/preview", {"user_prompt": "a\x00fox"}, "user_prompt"),
        ("POST", "/api/suggestions/enhance", {"prompt": "a\tcat"}, "prompt"),
    ):
        status, answer = await server.call(method, path, body)
        assert status == 422 and [item["field"] for item in answer["detail"]] == [field], (path, answer)
        assert "control character" in answer["detail"][0]["message"]
    assert (await server.call("GET", "/api/settings"))[1] == before
    status, _ = await server.call("PATCH", "/api/settings", {"prompt": "a café fox — 狐"})
    assert status == 200, "printable text beyond ASCII still passes"


async def test_each_events_listener_gets_what_it_asked_for(server: RunningServer) -> None:
    assert (await server.call("GET", "/api/events?types=settings,bogus"))[1]["detail"][0]["field"] == "types"
    assert (await server.call("GET", "/api/events?name=-x"))[1]["detail"][0]["field"] == "name"
    assert (await server.call("GET", "/api/events?colour=red"))[0] == 422
    urls = ("/api/events?types=preset", "/api/events?name=stage", "/api/events?stream=s-1&types=settings")
    listeners = [await server.http.ws_connect(server.url(url)) for url in urls]
    try:
        await eventually(lambda: server.app[keys.EVENTS].listeners == len(urls))
        assert (await server.call("PATCH", "/api/outputs/other/settings", {"seed": 3}))[0] == 200
        assert (await server.call("PATCH", "/api/outputs/stage/settings", {"seed": 4}))[0] == 200
        assert (await server.call("POST", "/api/strength", {"strength": 0.4}))[0] == 200
        assert (await server.call("POST", "/api/presets/anime/apply", {"prompt": "a fox"}))[0] == 200

        async def first(listener: aiohttp.ClientWebSocketResponse, count: int) -> list[dict[str, object]]:
            return [json.loads((await asyncio.wait_for(listener.receive(), 10)).data) for _ in range(count)]

        presets, stage, stream = listeners
        assert [(e["type"], e["action"]) for e in await first(presets, 1)] == [("preset", "applied")]
        assert [(e["type"], e["scope"]) for e in await first(stage, 2)] == [
            ("settings", "name:stage"),
            ("settings", "global"),
        ]
        heard = await first(stream, 2)
        assert [(e["type"], e["scope"]) for e in heard] == [("settings", "global")] * 2
        assert heard[1]["changed"]["preset"] == "anime"
    finally:
        for listener in listeners:
            await listener.close()
