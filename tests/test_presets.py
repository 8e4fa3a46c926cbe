"""Style presets against the running server: the API, persistence, OSC-style stepping, the engine."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pipeline import FrameParams, Priority
from server import keys
from server.config import Config
from server.control import keys as control_keys
from server.control.presets import UnknownPresetError, load_builtin_presets
from server.control.settings import UnknownStreamError, name_scope
from server.testing.rtc_client import connect
from server.testing.servers import RunningServer, start_server, stop_server
from server.testing.waiting import eventually

BUILTIN_IDS = [preset.id for preset in load_builtin_presets()]


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    """The real server, without warming every batch bucket first: these tests are about the API."""
    running = await start_server(make_config(engine={"warmup": False}))
    yield running
    await stop_server(running)


# How a preset that can be applied here is listed.
AVAILABLE = {"available": True, "unavailable_reason": None}


def custom(preset_id: str = "my-look", **changes: Any) -> dict[str, Any]:
    return {
        "id": preset_id,
        "name": "My look",
        "category": "custom",
        "template": "a neon ink sketch of {prompt}, glowing lines",
        "negative_prompt": "blurry",
        "strength": 0.45,
        "guidance_scale": 0.0,
        "seed": 5,
        "temporal": {"feedback": 0.25, "frames": 0, "target": None},  # a look may bring its temporal memory
        "num_inference_steps": 2,
        "control": {"kind": "depth", "scale": 0.0},  # and its ControlNet (off: none is loaded here)
        "loras": [],  # and its LoRAs (none)
        **changes,
    }


async def call(server: RunningServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with server.http.request(method, server.url(path), json=body) as response:
        return response.status, await response.json()


def bad_fields(detail: list[dict[str, Any]]) -> set[str]:
    return {item["field"] for item in detail}


async def test_builtins_are_listed_in_file_order_and_suit_a_turbo_model(server: RunningServer) -> None:
    status, body = await call(server, "GET", "/api/presets")
    assert status == 200
    presets = body["presets"]
    assert [p["id"] for p in presets] == BUILTIN_IDS
    assert len(presets) >= 10
    for preset in presets:
        assert preset["builtin"] is True
        assert preset["usage"] == 0
        assert preset["template"].count("{prompt}") == 1
        assert 0.4 <= preset["strength"] <= 0.7
        assert preset["guidance_scale"] == 0.0
        assert preset["name"] and preset["category"] and preset["negative_prompt"]

    status, body = await call(server, "GET", "/api/presets?category=painting")
    assert status == 200
    painting = [p["id"] for p in body["presets"]]
    assert "watercolor" in painting and "ukiyo-e" in painting
    assert {p["category"] for p in body["presets"]} == {"painting"}
    status, body = await call(server, "GET", "/api/presets?category=nothing-here")
    assert (status, body["presets"]) == (200, [])
    status, body = await call(server, "GET", "/api/presets?category=Not%20A%20Slug")
    assert status == 422 and bad_fields(body["detail"]) == {"category"}

    status, body = await call(server, "GET", "/api/presets/anime")
    assert status == 200 and body["name"] == "Anime" and body["builtin"] is True
    status, body = await call(server, "GET", "/api/presets/no-such-preset")
    assert status == 404 and body["error"] == "unknown preset"


async def test_custom_preset_create_read_replace_delete(server: RunningServer) -> None:
    status, created = await call(server, "POST", "/api/presets", custom())
    assert status == 201
    assert created == {**custom(), "builtin": False}

    status, listed = await call(server, "GET", "/api/presets")
    assert [p["id"] for p in listed["presets"]] == [*BUILTIN_IDS, "my-look"]
    status, listed = await call(server, "GET", "/api/presets?category=custom")
    assert [p["id"] for p in listed["presets"]] == ["my-look"]

    replacement = {k: v for k, v in custom(name="Renamed", strength=0.6).items() if k != "id"}
    status, replaced = await call(server, "PUT", "/api/presets/my-look", replacement)
    assert status == 200 and replaced["name"] == "Renamed" and replaced["strength"] == 0.6
    status, read = await call(server, "GET", "/api/presets/my-look")
    assert (status, read) == (200, {**replaced, **AVAILABLE})

    status, body = await call(server, "POST", "/api/presets", custom())
    assert status == 409 and body["error"] == "preset exists"
    status, body = await call(server, "PUT", "/api/presets/nobody", replacement)
    assert status == 404

    status, body = await call(server, "DELETE", "/api/presets/my-look")
    assert (status, body) == (200, {"deleted": "my-look"})
    assert (await call(server, "GET", "/api/presets/my-look"))[0] == 404
    assert (await call(server, "DELETE", "/api/presets/my-look"))[0] == 404


async def test_builtins_are_read_only_and_their_ids_taken(server: RunningServer) -> None:
    replacement = {k: v for k, v in custom().items() if k != "id"}
    status, body = await call(server, "PUT", "/api/presets/watercolor", replacement)
    assert status == 403 and body["error"] == "built-in presets are read-only"
    assert (await call(server, "PUT", "/api/presets/watercolor", {"junk": 1}))[0] == 403
    assert (await call(server, "DELETE", "/api/presets/watercolor"))[0] == 403
    status, body = await call(server, "POST", "/api/presets", custom("watercolor"))
    assert status == 409
    status, read = await call(server, "GET", "/api/presets/watercolor")
    assert read["name"] == "Watercolor"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"id": "Has Caps"}, "id"),
        ({"id": "-leading-dash"}, "id"),
        ({"id": "a" * 64}, "id"),
        ({"id": ""}, "id"),
        ({"template": "a picture of a cat"}, "template"),
        ({"template": "{prompt} and {prompt}"}, "template"),
        ({"template": "{prompt} with a stray {"}, "template"),
        ({"template": "{prompt}}"}, "template"),
        ({"template": "{subject} in {prompt}"}, "template"),
        ({"template": "{prompt} " + "x" * 300}, "template"),
        ({"name": "n" * 81}, "name"),
        ({"name": ""}, "name"),
        ({"negative_prompt": "x" * 501}, "negative_prompt"),
        ({"category": "Bad Category"}, "category"),
        ({"strength": 1.5}, "strength"),
        ({"strength": "0.5"}, "strength"),
        ({"seed": -1}, "seed"),
        ({"temporal": {"feedback": 2}}, "temporal.feedback"),
        ({"num_inference_steps": 5}, "num_inference_steps"),
        ({"surprise": True}, "surprise"),
    ],
)
async def test_bad_preset_fields_are_422_naming_the_field(
    server: RunningServer, changes: dict[str, Any], field: str
) -> None:
    status, body = await call(server, "POST", "/api/presets", custom(**changes))
    assert status == 422, body
    assert field in bad_fields(body["detail"])
    if field != "id":
        status, body = await call(server, "POST", "/api/presets", custom())
        assert status == 201
        replacement = {k: v for k, v in custom(**changes).items() if k != "id"}
        status, body = await call(server, "PUT", "/api/presets/my-look", replacement)
        assert status == 422 and field in bad_fields(body["detail"])


async def test_bad_bodies_are_4xx_not_500(server: RunningServer) -> None:
    json_type = {"Content-Type": "application/json"}
    async with server.http.post(server.url("/api/presets"), data=b"{not json", headers=json_type) as response:
        assert response.status == 400
    async with server.http.post(server.url("/api/presets"), json=["a list"]) as response:
        assert response.status == 400
    async with server.http.post(server.url("/api/presets"), data=b"x" * 70_000, headers=json_type) as response:
        assert response.status == 413


async def test_apply_sets_global_settings_keeps_the_subject_and_counts_usage(server: RunningServer) -> None:
    status, applied = await call(server, "POST", "/api/presets/watercolor/apply")
    assert status == 200
    watercolor = load_builtin_presets()[BUILTIN_IDS.index("watercolor")]
    assert applied["scope"] == "global" and applied["subject"] == "a person"
    settings = applied["settings"]
    assert settings["prompt"] == watercolor.fill("a person")
    assert (settings["strength"], settings["seed"], settings["guidance_scale"], settings["preset"]) == (
        watercolor.strength,
        watercolor.seed,
        watercolor.guidance_scale,
        "watercolor",
    )
    assert settings["negative_prompt"] == watercolor.negative_prompt
    assert (await call(server, "GET", "/api/settings"))[1] == settings

    status, applied = await call(server, "POST", "/api/presets/anime/apply", {"prompt": "a red fox"})
    assert status == 200 and applied["settings"]["prompt"].startswith("anime illustration of a red fox, ")
    # No subject given: the one the current prompt was made with carries over to the next preset.
    status, applied = await call(server, "POST", "/api/presets/pixel-art/apply", {})
    assert applied["subject"] == "a red fox"
    assert applied["settings"]["prompt"].startswith("16-bit pixel art of a red fox, ")
    # A prompt set by hand, as on the page, clears the preset and the negative prompt it brought ...
    status, typed = await call(server, "POST", "/api/prompt", {"prompt": "a paper boat"})
    assert (typed["preset"], typed["negative_prompt"]) == (None, "")
    # ... and is the subject the next preset fills its {prompt} slot with.
    status, applied = await call(server, "POST", "/api/presets/anime/apply")
    assert applied["subject"] == "a paper boat"
    assert applied["settings"]["prompt"].startswith("anime illustration of a paper boat, ")
    # Setting the prompt together with a preset keeps that preset (what a preset's own patch does).
    status, both = await call(server, "PATCH", "/api/settings", {"prompt": "a kite", "preset": "anime"})
    assert (both["prompt"], both["preset"]) == ("a kite", "anime")

    status, listed = await call(server, "GET", "/api/presets")
    usage = {p["id"]: p["usage"] for p in listed["presets"]}
    assert (usage["watercolor"], usage["anime"], usage["pixel-art"], usage["claymation"]) == (1, 2, 1, 0)
    assert await server.app[control_keys.PRESETS].usage() == usage


async def test_apply_bad_input(server: RunningServer) -> None:
    status, body = await call(server, "POST", "/api/presets/no-such-preset/apply")
    assert status == 404 and body["error"] == "unknown preset"
    status, body = await call(server, "POST", "/api/presets/anime/apply", {"stream_id": "nobody"})
    assert status == 404 and body["error"] == "unknown stream"
    status, body = await call(server, "POST", "/api/presets/anime/apply", {"prompt": "x" * 201})
    assert status == 422 and bad_fields(body["detail"]) == {"prompt"}
    status, body = await call(server, "POST", "/api/presets/anime/apply", {"prompt": 3})
    assert status == 422
    status, body = await call(server, "POST", "/api/presets/anime/apply", {"strength": 0.3})
    assert status == 422
    async with server.http.post(
        server.url("/api/presets/anime/apply"), data=b"{", headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 400
    assert (await call(server, "GET", "/api/settings"))[1]["preset"] is None


async def test_every_change_is_an_event(server: RunningServer) -> None:
    async with server.http.ws_connect(server.url("/api/events")) as ws:
        # The socket is registered a moment after the handshake.
        await eventually(lambda: server.app[keys.EVENTS].listeners, what="an events listener")
        await call(server, "POST", "/api/presets", custom())
        await call(server, "PUT", "/api/presets/my-look", {k: v for k, v in custom(name="B").items() if k != "id"})
        await call(server, "POST", "/api/presets/my-look/apply", {"prompt": "a dancer"})
        await call(server, "DELETE", "/api/presets/my-look")
        events = []
        while len(events) < 4:
            message = await asyncio.wait_for(ws.receive(), 5)
            assert message.type == aiohttp.WSMsgType.TEXT
            event = json.loads(message.data)
            if event["type"] == "preset":
                events.append(event)
    assert [(e["action"], e["preset_id"]) for e in events] == [
        ("created", "my-look"),
        ("updated", "my-look"),
        ("applied", "my-look"),
        ("deleted", "my-look"),
    ]
    assert events[1]["preset"]["name"] == "B"
    assert events[2]["scope"] == "global" and events[2]["prompt"] == "a neon ink sketch of a dancer, glowing lines"


async def test_a_preset_brings_its_temporal_memory_to_a_name_and_one_without_leaves_it(server: RunningServer) -> None:
    assert (await call(server, "POST", "/api/presets", custom()))[0] == 201
    status, named = await call(server, "PATCH", "/api/outputs/stage/settings", {"temporal": {"feedback": 0.7}})
    assert status == 200
    library = server.app[control_keys.PRESETS]
    await library.apply("anime", stream_id=name_scope("stage"))
    status, named = await call(server, "GET", "/api/outputs/stage/settings")
    assert named["settings"]["temporal"] == {"feedback": 0.7, "frames": 0, "target": None}, "a built-in brings none"
    await library.apply("my-look", stream_id=name_scope("stage"))
    status, named = await call(server, "GET", "/api/outputs/stage/settings")
    assert named["settings"]["temporal"] == {"feedback": 0.25, "frames": 0, "target": None}
    assert named["settings"]["preset"] == "my-look"


async def test_presets_saved_before_temporal_memory_and_steps_still_load(make_config: Callable[..., Config]) -> None:
    config = make_config(engine={"warmup": False})
    path = Path(config.server.data_dir) / "stylize.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as old:  # the table as it shipped before those columns
        old.executescript(
            "CREATE TABLE presets (id TEXT PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL, template TEXT "
            "NOT NULL, negative_prompt TEXT NOT NULL, strength REAL NOT NULL, guidance_scale REAL NOT NULL, seed "
            "INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);"
            "INSERT INTO presets VALUES ('old-look', 'Old', 'custom', 'old {prompt}', '', 0.5, 0.0, 1, 0, 0);"
        )
    old.close()
    running = await start_server(config)
    try:
        status, read = await call(running, "GET", "/api/presets/old-look")
        assert status == 200 and read["template"] == "old {prompt}"
        assert read["temporal"] is None and read["num_inference_steps"] is None
        replaced = {k: v for k, v in custom(name="Old").items() if k != "id"}
        assert (await call(running, "PUT", "/api/presets/old-look", replaced))[0] == 200
        status, read = await call(running, "GET", "/api/presets/old-look")
        assert read["temporal"] == {"feedback": 0.25, "frames": 0, "target": None}
    finally:
        await stop_server(running)


async def test_a_preset_sets_steps_and_one_without_steps_leaves_them(server: RunningServer) -> None:
    assert (await call(server, "POST", "/api/presets", custom()))[0] == 201
    status, applied = await call(server, "POST", "/api/presets/my-look/apply")
    assert (status, applied["settings"]["num_inference_steps"]) == (200, 2)
    status, applied = await call(server, "POST", "/api/presets/watercolor/apply")  # a built-in: no steps
    assert (status, applied["settings"]["num_inference_steps"]) == (200, 2)


async def test_custom_preset_and_usage_survive_a_restart(make_config: Callable[..., Config]) -> None:
    config = make_config(engine={"warmup": False})
    first = await start_server(config)
    try:
        assert (await call(first, "POST", "/api/presets", custom()))[0] == 201
        assert (await call(first, "POST", "/api/presets/my-look/apply"))[0] == 200
        assert (await call(first, "POST", "/api/presets/anime/apply"))[0] == 200
    finally:
        await stop_server(first)
    second = await start_server(config)
    try:
        status, read = await call(second, "GET", "/api/presets/my-look")
        assert (status, read) == (200, {**custom(), "builtin": False, **AVAILABLE})
        usage = await second.app[control_keys.PRESETS].usage()
        assert (usage["my-look"], usage["anime"], usage["watercolor"]) == (1, 1, 0)
    finally:
        await stop_server(second)


async def test_step_cycles_in_a_stable_order(server: RunningServer) -> None:
    library = server.app[control_keys.PRESETS]
    for preset_id in ("zz-last", "aa-first"):
        assert (await call(server, "POST", "/api/presets", custom(preset_id)))[0] == 201
    order = [*BUILTIN_IDS, "aa-first", "zz-last"]
    assert [p.id for p in await library.presets()] == order

    # Nothing applied yet: next is the first preset, previous the last.
    assert (await library.step(-1)).preset.id == "zz-last"
    seen = [(await library.step(+1)).preset.id for _ in range(len(order) + 1)]
    assert seen == [*order, order[0]]
    assert (await library.step(-1)).preset.id == "zz-last"
    assert (await library.step(-1)).preset.id == "aa-first"
    assert server.app[keys.SETTINGS].global_settings.preset == "aa-first"

    applied = await library.apply("anime", "a robot")
    assert applied.settings.prompt.startswith("anime illustration of a robot")
    stepped = await library.step(+1)
    assert stepped.preset.id == order[order.index("anime") + 1]
    assert stepped.subject == "a robot" and "a robot" in stepped.settings.prompt

    # Two steps sent at once land two places on, not twice on the same preset.
    first, second = await asyncio.gather(library.step(+1), library.step(+1))
    assert order.index(second.preset.id) == order.index(first.preset.id) + 1

    with pytest.raises(UnknownPresetError):
        await library.apply("no-such-preset")
    with pytest.raises(UnknownStreamError):
        await library.step(+1, stream_id="nobody")
    with pytest.raises(ValueError, match="non-zero"):
        await library.step(0)


async def test_apply_changes_what_the_engine_generates_next(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await connect(server.http, server.url("/api/offer"))
    try:
        await client.wait_frames(2)
        engine = server.app[keys.ENGINE].engine
        submitted: list[tuple[str, FrameParams]] = []
        submit = engine.submit

        def spy(key: str, frame: Any, params: FrameParams, priority: Priority = Priority.LIVE) -> Any:
            submitted.append((key, params))
            return submit(key, frame, params, priority)

        monkeypatch.setattr(engine, "submit", spy)

        status, applied = await call(server, "POST", "/api/presets/comic-book/apply", {"prompt": "a test pattern"})
        assert status == 200
        mark = len(submitted)
        await client.wait_frames(3)
        after = [params for _, params in submitted[mark:]]
        assert after, "no frame reached the engine after the apply"
        assert {(p.prompt, p.strength, p.seed) for p in after} == {
            (applied["settings"]["prompt"], applied["preset"]["strength"], applied["preset"]["seed"])
        }

        # One stream only: its frames follow the preset, global settings stay as they were.
        status, applied = await call(
            server, "POST", "/api/presets/pencil-sketch/apply", {"stream_id": client.stream_id}
        )
        assert status == 200 and applied["scope"] == client.stream_id
        assert applied["subject"] == "a test pattern"
        mark = len(submitted)
        await client.wait_frames(3)
        after = submitted[mark:]
        assert after and {key for key, _ in after} == {client.stream_id}
        assert {(p.prompt, p.strength) for _, p in after} == {
            (applied["settings"]["prompt"], applied["preset"]["strength"])
        }
        assert server.app[keys.SETTINGS].global_settings.preset == "comic-book"

        # The OSC path: stepping the stream moves it to the next preset, and the engine follows.
        stepped = await server.app[control_keys.PRESETS].step(+1, stream_id=client.stream_id)
        assert stepped.preset.id == BUILTIN_IDS[BUILTIN_IDS.index("pencil-sketch") + 1]
        mark = len(submitted)
        await client.wait_frames(3)
        assert {p.prompt for _, p in submitted[mark:]} == {stepped.settings.prompt}
    finally:
        await client.close()
