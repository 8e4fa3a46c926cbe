"""Every piece of app state, declared once as a typed `web.AppKey`."""

from __future__ import annotations

from aiohttp import web

from server.config import Config
from server.db import Database
from server.engine_service import EngineService
from server.events import EventHub
from server.jobs_store import JobStore
from server.jobs_worker import JobWorker
from server.peers import PeerManager
from server.preset_resolver import PresetResolver
from server.settings import SettingsStore

CONFIG = web.AppKey("config", Config)
SETTINGS = web.AppKey("settings", SettingsStore)
ENGINE = web.AppKey("engine", EngineService)
PEERS = web.AppKey("peers", PeerManager)
EVENTS = web.AppKey("events", EventHub)
DB = web.AppKey("db", Database)
JOBS = web.AppKey("jobs", JobStore)
JOB_WORKER = web.AppKey("job_worker", JobWorker)
# Set by the presets feature; read with `app.get(...)`, as a server may run without presets.
PRESET_RESOLVER = web.AppKey("preset_resolver", PresetResolver)
