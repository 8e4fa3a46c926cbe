"""POST /api/offer and the stream list: the WebRTC side of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from aiortc import RTCSessionDescription
from pydantic import BaseModel, ConfigDict, Field

from server import keys
from server.control.lora_ask import refuse_look
from server.control.model_ask import asked_model, refuse_unless_runs
from server.control.settings import StreamSettingsPatch
from server.fields import DEFAULT_NAME, ModelAsk, PublishName
from server.http.errors import ApiError
from server.http.inputs import read_model
from server.http.openapi import operation
from server.live import keys as live_keys
from server.live.refusals import refusals_as_http

routes = web.RouteTableDef()


class OfferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sdp: str = Field(min_length=1)
    type: Literal["offer"]
    settings: StreamSettingsPatch | None = None
    name: PublishName = DEFAULT_NAME  # outputs and per-name settings follow it across reconnects
    model: ModelAsk | None = Field(
        None,
        description="the model (id or family) this stream needs; default: the name's `model` setting. "
        "A cluster places it on a worker running it; 409 names the models on offer when none does",
    )


class Answer(BaseModel):
    sdp: str
    type: Literal["answer"]
    stream_id: str


class StreamList(BaseModel):
    streams: list[dict[str, Any]] = Field(description="id, state, created, stats and overrides of each stream")


class HungUp(BaseModel):
    closed: str


@routes.post("/api/offer")
@operation(
    "Start a stream: an SDP offer in, the answer out",
    tag="streams",
    body=OfferRequest,
    response=Answer,
    errors={
        400: "the offer is not SDP aiortc takes",
        409: "no engine here runs the model asked for, the control kind asked for is not loaded, or too many LoRAs",
        422: "a LoRA that cannot be worn with this model (or another bad field)",
        503: "server full, or the model not ready",
    },
)
async def offer(request: web.Request) -> web.Response:
    body = await read_model(request, OfferRequest)
    asked = asked_model(request.app[keys.SETTINGS], body.name, body.model)
    refuse_unless_runs(request.app[keys.ENGINE].describe(), asked)
    if body.settings is not None:
        await refuse_look(request.app, body.settings.values())
    peers = request.app[live_keys.PEERS]
    with refusals_as_http():
        description = RTCSessionDescription(sdp=body.sdp, type=body.type)
        client = request.get(keys.CLIENT, request.remote)
        session, answer = await peers.create(description, body.settings, name=body.name, remote=client)
    return web.json_response({"sdp": answer.sdp, "type": answer.type, "stream_id": session.id})


@routes.get("/api/streams")
@routes.get("/api/streams/")
@operation("The live streams", tag="streams", response=StreamList)
async def list_streams(request: web.Request) -> web.Response:
    peers = request.app[live_keys.PEERS]
    settings = request.app[keys.SETTINGS]
    streams = [
        {**session.describe(), "overrides": settings.overrides(session.id)} for session in peers.sessions.values()
    ]
    return web.json_response({"streams": streams})


@routes.delete("/api/streams/{stream_id}")
@operation("Hang up a stream", tag="streams", response=HungUp, errors={404: "unknown stream"})
async def hang_up(request: web.Request) -> web.Response:
    stream_id = request.match_info["stream_id"]
    if not await request.app[live_keys.PEERS].close(stream_id, "hung up over HTTP"):
        raise ApiError(404, "unknown stream", stream_id)
    return web.json_response({"closed": stream_id})
