"""Every piece of app state, declared once as a typed `web.AppKey`."""

from __future__ import annotations

from aiohttp import web

from server.config import Config
from server.db import Database
from server.engine_service import EngineService
from server.events import EventHub
from server.jpeg import JpegEncoder
from server.peers import PeerManager
from server.settings import SettingsStore

CONFIG = web.AppKey("config", Config)
SETTINGS = web.AppKey("settings", SettingsStore)
ENGINE = web.AppKey("engine", EngineService)
PEERS = web.AppKey("peers", PeerManager)
EVENTS = web.AppKey("events", EventHub)
DB = web.AppKey("db", Database)
JPEG = web.AppKey("jpeg", JpegEncoder)
