"""The control room as the app sees it: settings, presets, suggestions and events routes; OSC.

OSC goes both ways: the listener, feedback to controllers, OSCQuery and its mDNS advertisement.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from server import keys
from server.control import keys as control_keys
from server.control import name_settings_routes, preset_routes, settings_routes, suggestion_routes
from server.control.events import EVENT_TYPES, EventsQuery, SettingsEvent
from server.control.lora_ask import preset_unavailable
from server.control.osc import start_osc
from server.control.osc_feedback import OscFeedback
from server.control.oscquery import OscQueryServer
from server.control.presets import PresetLibrary, load_builtin_presets
from server.control.saved_settings import SavedSettings
from server.control.settings import SettingsChange
from server.control.suggestions import PromptSuggestions
from server.http.inputs import read_query
from server.http.openapi import REF, operation

logger = logging.getLogger(__name__)


async def _saved_settings_ctx(app: web.Application) -> AsyncIterator[None]:
    if app[keys.TOPOLOGY].shares_state:  # a cluster keeps the look in Redis, shared by every node
        yield
        return
    store = app[keys.SETTINGS]
    saved = SavedSettings(app[keys.DB], store)
    await saved.restore()
    store.add_listener(saved.changed)
    yield
    store.remove_listener(saved.changed)
    await saved.close()


async def _presets_ctx(app: web.Application) -> AsyncIterator[None]:
    builtins = await asyncio.to_thread(load_builtin_presets)
    app[control_keys.PRESETS] = PresetLibrary(
        builtins,
        app[control_keys.PRESET_STORAGE],
        app[keys.SETTINGS],
        app[keys.EVENTS],
        default_subject=app[keys.CONFIG].presets.default_subject,
        unavailable=preset_unavailable(app),
    )
    yield


async def _suggestions_ctx(app: web.Application) -> AsyncIterator[None]:
    app[control_keys.SUGGESTIONS] = await asyncio.to_thread(PromptSuggestions.load)
    yield


async def _settings_events_ctx(app: web.Application) -> AsyncIterator[None]:
    events = app[keys.EVENTS]

    def publish(change: SettingsChange) -> None:
        if change.remote:
            return  # the node it was made on published it to every node's listeners
        events.publish(
            SettingsEvent(scope=change.scope, source=change.source, changed=change.changed, settings=change.settings)
        )

    store = app[keys.SETTINGS]
    store.add_listener(publish)
    yield
    store.remove_listener(publish)


async def _osc_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG].osc
    if not config.enabled:
        yield
        return
    transport, listener = await start_osc(
        config, app[keys.SETTINGS], app[control_keys.PRESETS], on_reject=app[keys.METRICS].osc_dropped
    )
    app[control_keys.OSC] = listener
    listener.record = app.get(control_keys.RECORD)
    yield
    transport.close()
    await listener.close()


async def _osc_feedback_ctx(app: web.Application) -> AsyncIterator[None]:
    if control_keys.OSC not in app:
        yield
        return
    config, listener, store = app[keys.CONFIG].osc, app[control_keys.OSC], app[keys.SETTINGS]
    feedback = OscFeedback(config.feedback, config.feedback_rate_hz, store, sender=lambda: listener.sender)
    await feedback.start()
    app[control_keys.OSC_FEEDBACK] = listener.feedback = feedback
    store.add_listener(feedback.changed)
    yield
    store.remove_listener(feedback.changed)
    listener.feedback = None
    await feedback.close()


async def _oscquery_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG].osc
    if not config.query_port:
        yield
        return
    if control_keys.OSC not in app:
        logger.warning("[osc] query_port is set but OSC is off ([osc] enabled = false): no OSCQuery server")
        yield
        return
    presets, store = app[control_keys.PRESETS], app[keys.SETTINGS]

    async def preset_ids() -> list[str]:
        return [preset.id for preset in await presets.presets()]

    server = OscQueryServer(config, store, app[control_keys.OSC], preset_ids)
    await server.start()
    app[control_keys.OSC_QUERY] = server
    store.add_listener(server.changed)
    yield
    store.remove_listener(server.changed)
    await server.close()


async def _mdns_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG].osc
    if not config.mdns or control_keys.OSC_QUERY not in app:
        if config.mdns:
            logger.warning("[osc] mdns needs the OSCQuery server ([osc] query_port): nothing advertised")
        yield
        return
    from server.control.mdns import MdnsAdvertiser, service_infos  # here: zeroconf is an extra ([osc] mdns)

    advertiser = MdnsAdvertiser(
        config.host, service_infos(config.host, app[control_keys.OSC_QUERY].port, app[control_keys.OSC].port)
    )
    advertiser.start()
    yield
    await advertiser.close()


async def _close_event_listeners(app: web.Application) -> None:
    await app[keys.EVENTS].close()


CONTEXTS: list[Callable[[web.Application], AsyncIterator[None]]] = [
    _saved_settings_ctx,
    _presets_ctx,
    _suggestions_ctx,
    _settings_events_ctx,
    _osc_ctx,
    _osc_feedback_ctx,
    _oscquery_ctx,
    _mdns_ctx,
]


@operation(
    "Every change as it happens (WebSocket)",
    tag="events",
    status=101,
    response={"oneOf": [{"$ref": REF.format(model=model.__name__)} for model in EVENT_TYPES]},
    query=EventsQuery,
    description="Upgrade to a WebSocket (?token= when a token is set); each text message is one event of the "
    "types listed in x-websocket-events, each with its type and ts. Listeners only listen. ?types=, ?stream= "
    "and ?name= narrow what one listener gets (a bad value is a 422 before the upgrade).",
)
async def events(request: web.Request) -> web.WebSocketResponse:
    wanted = read_query(request, EventsQuery)
    return await request.app[keys.EVENTS].handle(request, wanted)


def setup_routes(app: web.Application) -> None:
    app.on_shutdown.append(_close_event_listeners)
    app.router.add_get("/api/events", events)
    app.add_routes(settings_routes.routes)
    app.add_routes(name_settings_routes.routes)
    app.add_routes(preset_routes.routes)
    app.add_routes(suggestion_routes.routes)
