"""Every piece of app state, declared once as a typed `web.AppKey`."""

from __future__ import annotations

from aiohttp import web

from server.config import Config
from server.db import Database
from server.engine_service import EngineService
from server.events import EventHub
from server.jobs_store import JobStore
from server.jobs_worker import JobWorker
from server.jpeg import JpegOutput
from server.metrics import Metrics
from server.osc import OscListener
from server.peers import PeerManager
from server.presets import PresetLibrary
from server.settings import SettingsStore
from server.stats import StatsReporter
from server.suggestions import PromptSuggestions

CONFIG = web.AppKey("config", Config)
SETTINGS = web.AppKey("settings", SettingsStore)
ENGINE = web.AppKey("engine", EngineService)
PEERS = web.AppKey("peers", PeerManager)
EVENTS = web.AppKey("events", EventHub)
DB = web.AppKey("db", Database)
OSC = web.AppKey("osc", OscListener)
PRESETS = web.AppKey("presets", PresetLibrary)
SUGGESTIONS = web.AppKey("suggestions", PromptSuggestions)
METRICS = web.AppKey("metrics", Metrics)
STATS = web.AppKey("stats", StatsReporter)
JOBS = web.AppKey("jobs", JobStore)
JOB_WORKER = web.AppKey("job_worker", JobWorker)
JPEG = web.AppKey("jpeg", JpegOutput)
