"""The global look survives a restart: every change is saved to SQLite, and read back at start-up.

So do the overrides of each stream name (scope `name:<name>`): a show styled by name comes back
styled. Writes are coalesced: a dragged slider sends dozens of changes a second, the database sees
the newest one per scope (one writer task, latest wins), and the last one is flushed on the way out.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
import time

from pydantic import ValidationError

from server.control.settings import SettingsChange, SettingsPatch, SettingsStore, StyleSettings, scope_name
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
        self._unsaved: dict[str, str | None] = {}  # scope -> settings as JSON, None to forget the scope
        self._writer: asyncio.Task[None] | None = None

    async def restore(self) -> bool:
        """Put the saved global settings (and each name's overrides) into the store; False when no global ones."""
        await self._restore_names()
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

    async def _restore_names(self) -> None:
        rows = await self._db.run(
            lambda conn: conn.execute("SELECT scope, settings FROM saved_settings WHERE scope LIKE 'name:%'").fetchall()
        )
        for scope, values in rows:
            name = scope_name(scope)
            try:
                patch = SettingsPatch.model_validate(json.loads(values))
            except (ValueError, ValidationError) as e:
                logger.warning("saved settings of %s ignored (they no longer validate): %s", scope, e)
                continue
            if name is not None:
                self._store.restore_name(name, {k: v for k, v in patch.values().items() if v is not None})

    def changed(self, change: SettingsChange) -> None:
        """A `SettingsStore` listener: save the global settings, or a name's overrides, after each change."""
        if change.scope == GLOBAL:
            self._unsaved[GLOBAL] = json.dumps(change.settings.model_dump())
        elif scope_name(change.scope) is not None:
            overrides = self._store.overrides(change.scope)
            self._unsaved[change.scope] = json.dumps(overrides) if overrides else None
        else:
            return
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="save-settings")

    async def close(self) -> None:
        """Wait for the writer, so the last change is on disk."""
        if self._writer is not None:
            await self._writer

    async def _write(self) -> None:
        while self._unsaved:
            unsaved, self._unsaved = self._unsaved, {}
            try:
                await self._db.run(functools.partial(_save, unsaved=unsaved))
            except sqlite3.Error:
                logger.exception("saving the settings failed")


def _save(conn: sqlite3.Connection, unsaved: dict[str, str | None]) -> None:
    for scope, values in unsaved.items():
        if values is None:
            conn.execute("DELETE FROM saved_settings WHERE scope = ?", (scope,))
            continue
        conn.execute(
            "INSERT INTO saved_settings (scope, settings, updated) VALUES (?, ?, ?) "
            "ON CONFLICT (scope) DO UPDATE SET settings = excluded.settings, updated = excluded.updated",
            (scope, values, time.time()),
        )
