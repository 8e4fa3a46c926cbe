"""Settings by stream name: global, then the name's overrides, then the stream's own; saved across restarts."""

from __future__ import annotations

from collections.abc import Callable

from server import keys
from server.config import Config
from server.control.settings import SettingsPatch, SettingsStore, StyleSettings, name_scope
from server.testing.servers import start_server, stop_server


def test_a_streams_settings_are_global_then_its_names_then_its_own() -> None:
    store = SettingsStore(StyleSettings(prompt="everyone", strength=0.5, seed=1))
    store.add_stream("left", "cam-a")
    store.add_stream("right", "cam-b")
    store.update_stream(name_scope("cam-a"), SettingsPatch(prompt="cam a", strength=0.2), "http")
    store.update_stream("left", SettingsPatch(strength=0.9), "http")
    store.update_global(SettingsPatch(seed=7, prompt="global again"), "http")
    left, right = store.effective("left"), store.effective("right")
    assert (left.prompt, left.strength, left.seed) == ("cam a", 0.9, 7)
    assert (right.prompt, right.strength, right.seed) == ("global again", 0.5, 7)
    assert store.names() == ["cam-a", "cam-b"]

    store.update_stream(name_scope("cam-a"), SettingsPatch.model_validate({"prompt": None, "strength": None}), "http")
    assert store.named_overrides() == {}, "a name back to following global holds nothing"
    assert store.effective("left").prompt == "global again"
    # A stream that leaves takes only its own overrides with it; a name keeps its own.
    store.update_stream(name_scope("cam-b"), SettingsPatch(prompt="b"), "http")
    store.remove_stream("right")
    assert store.named_overrides() == {"cam-b": {"prompt": "b"}}
    assert store.scope_of_name("latest") is None and store.scope_of_name("cam-b") == "name:cam-b"


async def test_name_overrides_over_http_survive_a_restart(make_config: Callable[..., Config]) -> None:
    config = make_config(osc={"enabled": False})
    running = await start_server(config, ready=False)
    try:
        url = running.url("/api/outputs/stage/settings")
        async with running.http.patch(url, json={"prompt": "by name", "strength": 0.25, "seed": 3}) as response:
            assert response.status == 200
            body = await response.json()
        assert body["overrides"] == {"prompt": "by name", "strength": 0.25, "seed": 3}
        assert body["settings"]["prompt"] == "by name" and body["settings"]["guidance_scale"] == 0.0
        async with running.http.patch(url, json={"seed": None}) as response:
            assert (await response.json())["overrides"] == {"prompt": "by name", "strength": 0.25}
        # A stream of that name (registered as an offer would) follows the name, under its own overrides.
        running.app[keys.SETTINGS].add_stream("s1", "stage")
        async with running.http.patch(running.url("/api/streams/s1/settings"), json={"strength": 0.8}) as response:
            settings = (await response.json())["settings"]
        assert (settings["prompt"], settings["strength"]) == ("by name", 0.8)
        async with running.http.get(running.url("/api/outputs")) as response:
            listed = (await response.json())["outputs"]
        assert [(o["name"], o["state"], o["overrides"]["strength"]) for o in listed] == [("stage", "waiting", 0.25)]
    finally:
        await stop_server(running)

    running = await start_server(config, ready=False)  # the same data dir
    try:
        async with running.http.get(running.url("/api/outputs/stage/settings")) as response:
            assert (await response.json())["overrides"] == {"prompt": "by name", "strength": 0.25}
    finally:
        await stop_server(running)
