"""Prompt help over HTTP: autocomplete, categories, random picks and enhance."""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from server.control import keys as control_keys
from server.control.suggestions import UnknownCategoryError
from server.fields import Prompt, Seed
from server.http.errors import ApiError
from server.http.inputs import read_model, read_query
from server.http.openapi import operation

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
    add_quality: bool = Field(True, description="add the quality terms the prompt lacks (the seed systems' switch)")
    add_style: bool = Field(True, description="add a style and a lighting when the prompt has none")


class AutocompleteItem(BaseModel):
    text: str
    category: str
    match_type: Literal["prefix", "word", "substring"]


class Autocompleted(BaseModel):
    query: str
    suggestions: list[AutocompleteItem]


class Category(BaseModel):
    name: str
    count: int


class Categories(BaseModel):
    categories: list[Category]


class CategoryFragments(BaseModel):
    category: str
    suggestions: list[str]


class Enhanced(BaseModel):
    prompt: str
    added: list[str]


class Components(BaseModel):
    subject: str
    style: str
    lighting: str
    quality: str


class RandomPrompt(BaseModel):
    prompt: str
    components: Components


class RandomPrompts(BaseModel):
    seed: int = Field(description="the seed that gives these prompts again")
    suggestions: list[RandomPrompt]


@routes.get("/api/suggestions/autocomplete")
@operation(
    "Fragments completing a prompt: prefix matches, then word matches, then substrings",
    tag="suggestions",
    query=AutocompleteQuery,
    response=Autocompleted,
)
async def autocomplete(request: web.Request) -> web.Response:
    query = read_query(request, AutocompleteQuery)
    found = request.app[control_keys.SUGGESTIONS].autocomplete(query.query, query.limit)
    return web.json_response({"query": query.query, "suggestions": [asdict(s) for s in found]})


@routes.get("/api/suggestions/categories")
@operation("Suggestion categories and their sizes", tag="suggestions", response=Categories)
async def categories(request: web.Request) -> web.Response:
    counts = request.app[control_keys.SUGGESTIONS].categories()
    return web.json_response({"categories": [{"name": name, "count": count} for name, count in counts.items()]})


@routes.get("/api/suggestions/by-category/{name}")
@operation(
    "The fragments of one category", tag="suggestions", response=CategoryFragments, errors={404: "unknown category"}
)
async def by_category(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    try:
        texts = request.app[control_keys.SUGGESTIONS].by_category(name)
    except UnknownCategoryError as e:
        raise ApiError(404, "unknown category", name) from e
    return web.json_response({"category": name, "suggestions": texts})


@routes.post("/api/suggestions/enhance")
@operation("Add the quality, style and lighting a prompt lacks", tag="suggestions", body=EnhanceBody, response=Enhanced)
async def enhance(request: web.Request) -> web.Response:
    body = await read_model(request, EnhanceBody)
    prompt, added = request.app[control_keys.SUGGESTIONS].enhance(
        body.prompt, quality=body.add_quality, style=body.add_style
    )
    return web.json_response({"prompt": prompt, "added": added})


@routes.get("/api/suggestions/random")
@operation(
    "Composed random prompts with their components", tag="suggestions", query=RandomQuery, response=RandomPrompts
)
async def random_suggestions(request: web.Request) -> web.Response:
    query = read_query(request, RandomQuery)
    seed, picks = request.app[control_keys.SUGGESTIONS].random(query.count, query.seed)
    return web.json_response({"seed": seed, "suggestions": [asdict(s) for s in picks]})
