"""The global look survives a restart: every change is saved to SQLite, and read back at start-up.

Writes are coalesced: a dragged slider sends dozens of changes a second, the database sees the
newest one (one writer task, latest wins), and the last one is flushed on the way out.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
import time

from pydantic import ValidationError

from server.control.settings import SettingsChange, SettingsStore, StyleSettings
from server.db import Database

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS saved_settings (
    scope TEXT PRIMARY KEY,
    settings TEXT NOT NULL,
    updated REAL NOT NULL
);
"""
GLOBAL = "global"


class SavedSettings:
    def __init__(self, db: Database, store: SettingsStore) -> None:
        self._db = db
        self._store = store
        self._unsaved: StyleSettings | None = None
        self._writer: asyncio.Task[None] | None = None

    async def restore(self) -> bool:
        """Put the saved global settings into the store; False when there are none (or none usable)."""
        row = await self._db.run(
            lambda conn: conn.execute("SELECT settings FROM saved_settings WHERE scope = ?", (GLOBAL,)).fetchone()
        )
        if row is None:
            return False
        try:
            saved = StyleSettings.model_validate({**self._store.global_settings.model_dump(), **json.loads(row[0])})
        except (ValueError, ValidationError) as e:
            logger.warning("saved settings ignored (they no longer validate): %s", e)
            return False
        self._store.restore(saved)
        logger.info("settings restored from the last run: prompt=%r strength=%s", saved.prompt, saved.strength)
        return True

    def changed(self, change: SettingsChange) -> None:
        """A `SettingsStore` listener: save the global settings after every global change."""
        if change.scope != GLOBAL:
            return
        self._unsaved = change.settings
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="save-settings")

    async def close(self) -> None:
        """Wait for the writer, so the last change is on disk."""
        if self._writer is not None:
            await self._writer

    async def _write(self) -> None:
        while self._unsaved is not None:
            settings, self._unsaved = self._unsaved, None
            values = json.dumps(settings.model_dump())
            try:
                await self._db.run(functools.partial(_save, values=values))
            except sqlite3.Error:
                logger.exception("saving the settings failed")


def _save(conn: sqlite3.Connection, values: str) -> None:
    conn.execute(
        "INSERT INTO saved_settings (scope, settings, updated) VALUES (?, ?, ?) "
        "ON CONFLICT (scope) DO UPDATE SET settings = excluded.settings, updated = excluded.updated",
        (GLOBAL, values, time.time()),
    )
