"""Every piece of app state, declared once as a typed `web.AppKey` (and per-request state as `web.RequestKey`).

The types are imported for the type checker only, so importing this module loads nothing but
aiohttp: any room (and the http edge) can name app state without importing the other rooms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from server.cluster.node import ClusterNode
    from server.config import Config
    from server.control.events import EventHub
    from server.control.osc import OscListener
    from server.control.osc_feedback import OscFeedback
    from server.control.oscquery import OscQueryServer
    from server.control.presets import PresetLibrary, PresetStorage
    from server.control.settings import SettingsStore
    from server.control.suggestions import PromptSuggestions
    from server.db import Database
    from server.engine_service import EngineService
    from server.http.relay import Relay
    from server.jobs.store import JobRecords
    from server.jobs.worker import JobWorker
    from server.jpeg import JpegOutput
    from server.live.outputs import NamedOutputs
    from server.live.peers import PeerManager
    from server.live.viewers import ViewerManager
    from server.observe.metrics import Metrics
    from server.observe.stats import StatsReporter

CONFIG: web.AppKey[Config] = web.AppKey("config")
SETTINGS: web.AppKey[SettingsStore] = web.AppKey("settings")
ENGINE: web.AppKey[EngineService] = web.AppKey("engine")
PEERS: web.AppKey[PeerManager] = web.AppKey("peers")
EVENTS: web.AppKey[EventHub] = web.AppKey("events")
DB: web.AppKey[Database] = web.AppKey("db")
OSC: web.AppKey[OscListener] = web.AppKey("osc")
OSC_FEEDBACK: web.AppKey[OscFeedback] = web.AppKey("osc_feedback")
OSC_QUERY: web.AppKey[OscQueryServer] = web.AppKey("osc_query")
PRESETS: web.AppKey[PresetLibrary] = web.AppKey("presets")
PRESET_STORAGE: web.AppKey[PresetStorage] = web.AppKey("preset_storage")
SUGGESTIONS: web.AppKey[PromptSuggestions] = web.AppKey("suggestions")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
STATS: web.AppKey[StatsReporter] = web.AppKey("stats")
JOBS: web.AppKey[JobRecords] = web.AppKey("jobs")
JOB_WORKER: web.AppKey[JobWorker] = web.AppKey("job_worker")
JPEG: web.AppKey[JpegOutput] = web.AppKey("jpeg")
OUTPUTS: web.AppKey[NamedOutputs] = web.AppKey("outputs")
VIEWERS: web.AppKey[ViewerManager] = web.AppKey("viewers")
# Only in a cluster (`[cluster] role`): this node's part in it, and its client for the other nodes.
CLUSTER: web.AppKey[ClusterNode] = web.AppKey("cluster")
RELAY: web.AppKey[Relay] = web.AppKey("relay")
# The OpenAPI document, built at start-up from the routes (GET /openapi.json).
OPENAPI: web.AppKey[dict[str, Any]] = web.AppKey("openapi")

# The client's address as the security middleware found it (a trusted proxy's X-Forwarded-For believed).
CLIENT: web.RequestKey[str] = web.RequestKey("client")
