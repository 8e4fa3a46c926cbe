"""Prompt help over HTTP: autocomplete, categories, random picks and enhance."""

from __future__ import annotations

from dataclasses import asdict

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from server import keys
from server.control.suggestions import UnknownCategoryError
from server.fields import Prompt, Seed
from server.http.errors import ApiError
from server.http.inputs import read_model, read_query

routes = web.RouteTableDef()


class AutocompleteQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: Prompt = ""
    limit: int = Field(10, ge=1, le=50)


class RandomQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int = Field(5, ge=1, le=50)
    seed: Seed | None = None


class EnhanceBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: Prompt


@routes.get("/api/suggestions/autocomplete")
async def autocomplete(request: web.Request) -> web.Response:
    query = read_query(request, AutocompleteQuery)
    found = request.app[keys.SUGGESTIONS].autocomplete(query.query, query.limit)
    return web.json_response({"query": query.query, "suggestions": [asdict(s) for s in found]})


@routes.get("/api/suggestions/categories")
async def categories(request: web.Request) -> web.Response:
    counts = request.app[keys.SUGGESTIONS].categories()
    return web.json_response({"categories": [{"name": name, "count": count} for name, count in counts.items()]})


@routes.get("/api/suggestions/by-category/{name}")
async def by_category(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    try:
        texts = request.app[keys.SUGGESTIONS].by_category(name)
    except UnknownCategoryError as e:
        raise ApiError(404, "unknown category", name) from e
    return web.json_response({"category": name, "suggestions": texts})


@routes.post("/api/suggestions/enhance")
async def enhance(request: web.Request) -> web.Response:
    body = await read_model(request, EnhanceBody)
    prompt, added = request.app[keys.SUGGESTIONS].enhance(body.prompt)
    return web.json_response({"prompt": prompt, "added": added})


@routes.get("/api/suggestions/random")
async def random_suggestions(request: web.Request) -> web.Response:
    query = read_query(request, RandomQuery)
    seed, picks = request.app[keys.SUGGESTIONS].random(query.count, query.seed)
    return web.json_response({"seed": seed, "suggestions": [asdict(s) for s in picks]})
