"""The control room's app state: presets, suggestions and the OSC side."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from server.control.osc import OscListener, RecordControl
    from server.control.osc_feedback import OscFeedback
    from server.control.oscquery import OscQueryServer
    from server.control.presets import PresetLibrary, PresetStorage
    from server.control.suggestions import PromptSuggestions

# Where custom presets are kept: SQLite alone, Redis in a cluster (the composition root chooses).
PRESET_STORAGE: web.AppKey[PresetStorage] = web.AppKey("control.preset_storage")
PRESETS: web.AppKey[PresetLibrary] = web.AppKey("control.presets")
SUGGESTIONS: web.AppKey[PromptSuggestions] = web.AppKey("control.suggestions")
OSC: web.AppKey[OscListener] = web.AppKey("control.osc")
OSC_FEEDBACK: web.AppKey[OscFeedback] = web.AppKey("control.osc_feedback")
OSC_QUERY: web.AppKey[OscQueryServer] = web.AppKey("control.osc_query")
# Needs. Start or stop recording a name (/stylize/name/<name>/record); absent where none are kept.
RECORD: web.AppKey[RecordControl] = web.AppKey("control.record")
