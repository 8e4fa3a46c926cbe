"""Prompt suggestions against the running server: autocomplete, categories, random, enhance."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from server.config import Config
from server.fields import MAX_PROMPT
from server.testing.servers import RunningServer, start_server, stop_server

CATEGORIES = ["subjects", "styles", "lighting", "camera", "quality", "mood", "colors"]


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    """The real server, without warming every batch bucket first: these tests are about the API."""
    running = await start_server(make_config(engine={"warmup": False}))
    yield running
    await stop_server(running)


async def call(server: RunningServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with server.http.request(method, server.url(path), json=body) as response:
        return response.status, await response.json()


async def autocomplete(server: RunningServer, query: str, limit: int = 10) -> list[str]:
    status, body = await call(server, "GET", f"/api/suggestions/autocomplete?query={query}&limit={limit}")
    assert status == 200, body
    return [s["text"] for s in body["suggestions"]]


async def test_categories_and_their_fragments(server: RunningServer) -> None:
    status, body = await call(server, "GET", "/api/suggestions/categories")
    assert status == 200
    assert [c["name"] for c in body["categories"]] == CATEGORIES
    assert sum(c["count"] for c in body["categories"]) >= 60

    status, body = await call(server, "GET", "/api/suggestions/by-category/lighting")
    assert status == 200 and body["category"] == "lighting"
    assert "golden hour" in body["suggestions"] and len(body["suggestions"]) >= 8
    status, body = await call(server, "GET", "/api/suggestions/by-category/nonsense")
    assert status == 404 and body["error"] == "unknown category"


async def test_autocomplete_ranks_prefix_matches_then_word_matches(server: RunningServer) -> None:
    # No fragment starts with "light"; these have a word that does, A-Z, then those holding it inside a word.
    found = await autocomplete(server, "Light")
    assert found[:6] == [
        "cinematic lighting",
        "dramatic rim lighting",
        "neon lights",
        "soft lighting",
        "studio lighting",
        "volumetric light",
    ]
    assert found[6:] == sorted(found[6:]) and "candlelight" in found[6:]
    _, body = await call(server, "GET", "/api/suggestions/autocomplete?query=light&limit=50")
    kinds = [item["match_type"] for item in body["suggestions"]]
    assert kinds == ["word"] * 6 + ["substring"] * (len(kinds) - 6)
    _, body = await call(server, "GET", "/api/suggestions/autocomplete?query=sepia")
    assert body["suggestions"][0]["match_type"] == "prefix"
    # Prefix matches come first, A-Z, and the limit cuts the list.
    assert await autocomplete(server, "s", limit=3) == ["sepia", "serene", "shallow depth of field"]
    both = await autocomplete(server, "pa", limit=50)
    assert both[0] == "pastel colors"
    assert both[1:] == sorted(both[1:]) and "oil painting" in both and "origami paper craft" in both
    # Case and spacing do not matter; the answer is the same every time.
    assert await autocomplete(server, "OIL%20%20paint") == ["oil painting"]
    assert await autocomplete(server, "pa", limit=50) == both
    assert await autocomplete(server, "") == []
    assert await autocomplete(server, "zzzz") == []


@pytest.mark.parametrize("query", ["limit=0", "limit=51", "limit=many", "limit=2.5", f"query={'x' * 501}"])
async def test_autocomplete_bad_query_is_422(server: RunningServer, query: str) -> None:
    status, body = await call(server, "GET", f"/api/suggestions/autocomplete?{query}")
    assert status == 422 and bad_field(body) == query.split("=")[0]


def bad_field(body: dict[str, Any]) -> str:
    [item] = body["detail"]
    field: str = item["field"]
    return field


async def test_enhance_adds_only_what_is_missing(server: RunningServer) -> None:
    status, body = await call(server, "POST", "/api/suggestions/enhance", {"prompt": "a cat"})
    assert status == 200
    assert body["added"] == ["highly detailed", "sharp focus", "vibrant colors", "digital painting",
                             "soft cinematic lighting"]  # fmt: skip
    assert body["prompt"] == "a cat, " + ", ".join(body["added"])

    prompt = "a Highly Detailed watercolor portrait of a cat, golden hour,"
    status, body = await call(server, "POST", "/api/suggestions/enhance", {"prompt": prompt})
    assert body["added"] == ["sharp focus", "vibrant colors"]
    assert body["prompt"] == prompt.rstrip(",") + ", sharp focus, vibrant colors"

    # Enhancing twice adds nothing more.
    status, again = await call(server, "POST", "/api/suggestions/enhance", {"prompt": body["prompt"]})
    assert (again["prompt"], again["added"]) == (body["prompt"], [])

    # Near the limit only what fits is added.
    long_prompt = "a painting of " + "x" * (MAX_PROMPT - 14 - 15)
    status, body = await call(server, "POST", "/api/suggestions/enhance", {"prompt": long_prompt})
    assert status == 200 and len(body["prompt"]) <= MAX_PROMPT
    assert body["added"] == ["sharp focus"]


async def test_enhance_takes_the_seed_systems_switches(server: RunningServer) -> None:
    body = {"prompt": "a cat", "add_quality": False}
    status, answer = await call(server, "POST", "/api/suggestions/enhance", body)
    assert status == 200 and answer["added"] == ["digital painting", "soft cinematic lighting"]
    body = {"prompt": "a cat", "add_style": False}
    status, answer = await call(server, "POST", "/api/suggestions/enhance", body)
    assert status == 200 and answer["added"] == ["highly detailed", "sharp focus", "vibrant colors"]
    body = {"prompt": "a cat", "add_quality": False, "add_style": False}
    assert (await call(server, "POST", "/api/suggestions/enhance", body))[1] == {"prompt": "a cat", "added": []}


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "x" * (MAX_PROMPT + 1)},
        {"prompt": 5},
        {},
        {"prompt": "a", "x": 1},
        {"prompt": "a", "add_style": "no"},
    ],
)
async def test_enhance_bad_body_is_422(server: RunningServer, body: dict[str, Any]) -> None:
    status, answer = await call(server, "POST", "/api/suggestions/enhance", body)
    assert status == 422 and answer["error"] == "invalid fields"


async def test_random_is_deterministic_with_a_seed(server: RunningServer) -> None:
    status, first = await call(server, "GET", "/api/suggestions/random?count=6&seed=7")
    assert status == 200 and first["seed"] == 7
    texts = [s["prompt"] for s in first["suggestions"]]
    assert len(texts) == len(set(texts)) == 6
    assert (await call(server, "GET", "/api/suggestions/random?count=6&seed=7"))[1] == first
    other = (await call(server, "GET", "/api/suggestions/random?count=6&seed=8"))[1]
    assert [s["prompt"] for s in other["suggestions"]] != texts

    status, unseeded = await call(server, "GET", "/api/suggestions/random")
    assert status == 200 and len(unseeded["suggestions"]) == 5
    replay = (await call(server, "GET", f"/api/suggestions/random?seed={unseeded['seed']}"))[1]
    assert replay == unseeded

    for query in ("count=0", "count=51", "seed=-1", "seed=abc"):
        status, body = await call(server, "GET", f"/api/suggestions/random?{query}")
        assert status == 422 and bad_field(body) == query.split("=")[0]
