"""The settings every node shares, kept in Redis: each node holds a replica that its streams read on
every frame, and every change is written through and published so all replicas follow.

A change made here is applied to the replica at once (the answer, the events and OSC feedback do
not wait for Redis), then queued as one transaction: the scope's fields (`<p>:settings:<scope>`,
a hash of JSON values; a field set to null is removed) and a message on `<p>:settings`. Every node
applies every message in the order Redis published them, its own included, so concurrent changes
end the same everywhere (per field, the last one Redis saw wins); a replayed own change that moves
the replica (someone else's landed in between) is told to the listeners as a correction.

Streams are registered here too (`<p>:streams`: id -> name, node and the node's instance), so any
node can route, list and style any stream. A node that dies leaves its streams behind: `reap`
removes those whose instance no longer runs (one node wins each removal, atomically).

On every (re)connection `resync` runs before any message is read: when Redis lost its data (no
`<p>:epoch`, or another one than last time), this node writes its replica back (fields only where
missing: the first node back wins); it re-registers its own streams; then it reads the whole state
back and takes it (what Redis holds wins over the replica).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, get_args

from pydantic import ValidationError
from redis.asyncio.client import Pipeline

from server.cluster.identity import NodeIdentity
from server.cluster.link import RedisLink, text_map, texts
from server.control.settings import (
    SettingsChange,
    SettingsPatch,
    SettingsStore,
    Source,
    StyleSettings,
    UnknownStreamError,
    name_scope,
    scope_name,
)
from server.fields import DEFAULT_NAME

logger = logging.getLogger(__name__)

_UNREADABLE = object()  # what `_decoded` gives for a value that is not JSON
# What a stream's entry in `<p>:streams` must hold.
OWNER_FIELDS = ("name", "node", "instance")

GLOBAL = "global"
DEPARTED_KEPT = 512
SOURCES: frozenset[str] = frozenset(get_args(Source))
# Removes a stream only if it is still registered, so that of the nodes that find it dead one tells.
REAP_SCRIPT = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[3], ARGV[1])
  redis.call('PUBLISH', KEYS[4], ARGV[2])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Owner:
    """The worker a stream runs on: its name and the instance (the run) of it."""

    node: str
    instance: str

    def as_dict(self, name: str) -> dict[str, str]:
        return {"name": name, "node": self.node, "instance": self.instance}


class ReplicatedSettings(SettingsStore):
    def __init__(self, initial: StyleSettings, link: RedisLink, node: NodeIdentity) -> None:
        super().__init__(initial)
        self._link = link
        self._node = node
        self._me = Owner(node.id, node.instance)
        self._owners: dict[str, Owner] = {}  # every stream of the cluster, oldest first
        self._departed: deque[str] = deque(maxlen=DEPARTED_KEPT)  # the latest streams to leave
        self._epoch: str | None = None
        self._channel = link.key("settings")
        self._scopes = link.key("scopes")
        self._streams = link.key("streams")
        self._reap = link.redis.register_script(REAP_SCRIPT)
        link.subscribe(self._channel, self._received)
        link.on_connect(self.resync)

    # -- what the cluster asks of it -----------------------------------------------------------

    def owner(self, stream_id: str) -> Owner | None:
        return self._owners.get(stream_id)

    def departed(self, stream_id: str) -> bool:
        """Whether the stream was here and has left (of the last few hundred to leave)."""
        return stream_id in self._departed

    def streams(self) -> dict[str, tuple[str, Owner]]:
        """Every stream of the cluster, oldest first: id -> (name, owner)."""
        return {sid: ((self.stream_name(sid) or DEFAULT_NAME), owner) for sid, owner in self._owners.items()}

    async def reap(self, alive: set[str]) -> list[tuple[str, str]]:
        """Remove the streams whose worker instance is not in `alive`; (id, name) of those this node removed."""
        removed = []
        for stream_id, owner in list(self._owners.items()):
            if owner.instance in alive or owner == self._me:
                continue
            message = self._message("unstream", id=stream_id)
            keys = [self._streams, self._key(stream_id), self._scopes, self._channel]
            won = await self._reap(keys=keys, args=[stream_id, message])
            name = self.stream_name(stream_id) or DEFAULT_NAME
            self._forget(stream_id)
            if won:
                removed.append((stream_id, name))
        return removed

    # -- changes made on this node -------------------------------------------------------------

    def add_stream(self, stream_id: str, name: str = DEFAULT_NAME) -> None:
        super().add_stream(stream_id, name)
        self._owners[stream_id] = self._me
        entry = json.dumps(self._me.as_dict(name))
        message = self._message("stream", id=stream_id, **self._me.as_dict(name))

        def write(pipe: Pipeline) -> None:
            pipe.hset(self._streams, stream_id, entry)
            pipe.publish(self._channel, message)

        self._link.send(write)

    def remove_stream(self, stream_id: str) -> None:
        if scope_name(stream_id) is not None:
            return
        super().remove_stream(stream_id)
        if self._owners.pop(stream_id, None) is None:
            return
        self._departed.append(stream_id)
        message = self._message("unstream", id=stream_id)

        def write(pipe: Pipeline) -> None:
            pipe.hdel(self._streams, stream_id)
            pipe.delete(self._key(stream_id))
            pipe.srem(self._scopes, stream_id)
            pipe.publish(self._channel, message)

        self._link.send(write)

    def update_global(self, patch: SettingsPatch, source: Source) -> StyleSettings:
        patch = self.as_typed(GLOBAL, patch, source)  # what is applied is what the other nodes get
        settings = super().update_global(patch, source)
        self._send_set(GLOBAL, patch.values(), source)
        return settings

    def update_stream(self, stream_id: str, patch: SettingsPatch, source: Source) -> StyleSettings:
        if self.has_stream(stream_id):
            patch = self.as_typed(stream_id, patch, source)
        settings = super().update_stream(stream_id, patch, source)
        self._send_set(stream_id, patch.values(), source)
        return settings

    def _send_set(self, scope: str, changed: dict[str, Any], source: Source) -> None:
        key = self._key(scope)
        values: dict[Any, str] = {name: json.dumps(value) for name, value in changed.items() if value is not None}
        nulls = [name for name, value in changed.items() if value is None]
        message = self._message("set", scope=scope, changed=changed, source=source)

        def write(pipe: Pipeline) -> None:
            if values:
                pipe.hset(key, mapping=values)
            if nulls:
                pipe.hdel(key, *nulls)
            pipe.sadd(self._scopes, scope)
            pipe.publish(self._channel, message)

        self._link.send(write)

    def _message(self, op: str, **fields: Any) -> str:
        return json.dumps({"op": op, "origin": self._node.instance, **fields})

    def _key(self, scope: str) -> str:
        return self._link.key("settings", scope)

    # -- changes from every node ---------------------------------------------------------------

    def _received(self, data: str) -> None:
        message = json.loads(data)
        op, mine = message.get("op"), message.get("origin") == self._node.instance
        stream_id = str(message.get("id", ""))
        if op == "stream" and not mine:
            self._take_stream(stream_id, str(message["name"]), Owner(str(message["node"]), str(message["instance"])))
        elif op == "unstream" and self._owners.get(stream_id) != self._me:
            self._forget(stream_id)  # a stream of this node's own stays: its heartbeat registers it again
        elif op == "set":
            self._take_change(str(message["scope"]), message.get("changed") or {}, message.get("source"), mine)

    def _take_stream(self, stream_id: str, name: str, owner: Owner) -> None:
        if stream_id not in self._owners:
            SettingsStore.add_stream(self, stream_id, name)
        self._owners[stream_id] = owner

    def _forget(self, stream_id: str) -> None:
        if self._owners.pop(stream_id, None) is not None:
            self._departed.append(stream_id)
        SettingsStore.remove_stream(self, stream_id)

    def _take_change(self, scope: str, changed: dict[str, Any], source: Any, mine: bool) -> None:
        try:
            values = SettingsPatch.model_validate(changed).values()
            before = self._current(scope)
            settings = self.take(scope, values)
        except UnknownStreamError:
            return  # a stream that has left meanwhile
        except (ValueError, ValidationError) as e:
            logger.warning("settings change for %s from another node ignored: %s", scope, e)
            return
        if mine and settings == before:
            return  # this node's own change, told to its listeners when it was made
        self.tell(SettingsChange(scope, source if source in SOURCES else "config", values, settings, remote=True))

    def _current(self, scope: str) -> StyleSettings | None:
        if scope == GLOBAL:
            return self.global_settings
        return self.effective(scope) if self.has_stream(scope) else None

    # -- (re)connection ------------------------------------------------------------------------

    async def resync(self) -> None:
        redis = self._link.redis
        epoch_key = self._link.key("epoch")
        epoch = await redis.get(epoch_key)
        if epoch is None:
            await redis.set(epoch_key, uuid.uuid4().hex, nx=True)
            epoch = await redis.get(epoch_key)
        epoch = None if epoch is None else str(epoch)
        if self._epoch != epoch:
            if self._epoch is not None or self._link.connections == 0:
                await self._write_back(first=self._epoch is None)
            self._epoch = epoch
        await self._register_own_streams()
        await self._take_snapshot()

    async def _write_back(self, first: bool) -> None:
        """Redis has none of this cluster's state (a new cluster, or Redis came back empty): fill in ours."""
        if first and await self._link.redis.exists(self._key(GLOBAL)):
            return  # joining a running cluster: its state wins
        logger.info("writing this node's settings into Redis (the fields it misses)")
        scopes: dict[str, dict[str, Any]] = {GLOBAL: self.global_settings.model_dump()}
        scopes.update({name_scope(name): values for name, values in self.named_overrides().items()})

        def write(pipe: Pipeline) -> None:
            for scope, values in scopes.items():
                for field, value in values.items():
                    if value is not None:
                        pipe.hsetnx(self._key(scope), field, json.dumps(value))
                pipe.sadd(self._scopes, scope)

        await self._link.transaction(write)

    async def _register_own_streams(self) -> None:
        """This node's streams back in Redis, and told of again (nodes that resynced first read none)."""
        own = {sid: (self.stream_name(sid) or DEFAULT_NAME) for sid, owner in self._owners.items() if owner == self._me}
        if not own:
            return

        def write(pipe: Pipeline) -> None:
            for stream_id, name in own.items():
                pipe.hset(self._streams, stream_id, json.dumps(self._me.as_dict(name)))
                pipe.publish(self._channel, self._message("stream", id=stream_id, **self._me.as_dict(name)))
                overrides = self.overrides(stream_id)
                for field, value in overrides.items():
                    pipe.hsetnx(self._key(stream_id), field, json.dumps(value))
                if overrides:
                    changed = self._message("set", scope=stream_id, changed=overrides, source="config")
                    pipe.publish(self._channel, changed)
                pipe.sadd(self._scopes, stream_id)

        await self._link.transaction(write)

    async def _take_snapshot(self) -> None:
        redis = self._link.redis
        scopes = sorted(texts(await redis.smembers(self._scopes)))
        streams = text_map(await redis.hgetall(self._streams))
        async with redis.pipeline(transaction=False) as pipe:
            for scope in scopes:
                pipe.hgetall(self._key(scope))
            stored = {scope: text_map(values) for scope, values in zip(scopes, await pipe.execute(), strict=True)}
        for stream_id, entry in streams.items():
            info = _decoded(entry)
            if not isinstance(info, dict) or not all(isinstance(info.get(k), str) for k in OWNER_FIELDS):
                logger.warning("stream %s in Redis ignored: not a stream's entry (%.80r)", stream_id, entry)
                continue
            self._take_stream(stream_id, info["name"], Owner(info["node"], info["instance"]))
        for stream_id in [sid for sid, owner in self._owners.items() if sid not in streams and owner != self._me]:
            self._forget(stream_id)
        if stored.get(GLOBAL):
            fields = _fields(GLOBAL, stored[GLOBAL])
            self._replace(GLOBAL, {**self.global_settings.model_dump(), "preset": None, **fields})
        named = {scope for scope in stored if scope_name(scope) is not None}
        named |= {name_scope(name) for name in self.named_overrides()}
        for scope in sorted(named):
            self._replace(scope, _fields(scope, stored.get(scope, {})))
        for stream_id in [sid for sid, owner in self._owners.items() if owner != self._me]:
            self._replace(stream_id, _fields(stream_id, stored.get(stream_id, {})))

    def _replace(self, scope: str, values: dict[str, Any]) -> None:
        """Take what Redis holds for `scope` as it is; listeners hear of what differs."""
        before = self._current(scope)
        try:
            if scope == GLOBAL:
                settings = StyleSettings.model_validate(values)
                changed = {k: v for k, v in settings.model_dump().items() if getattr(before, k, None) != v}
                self.restore(settings)
            else:
                overrides = SettingsPatch.model_validate(values).values()
                current = self.overrides(scope) if self.has_stream(scope) else {}
                changed = {k: overrides.get(k) for k in current.keys() | overrides.keys()}
                changed = {k: v for k, v in changed.items() if current.get(k) != v}
                if not changed:
                    return
                settings = self.take(scope, changed)
        except (ValueError, ValidationError) as e:
            logger.warning("settings of %s in Redis ignored (they do not validate): %s", scope, e)
            return
        if changed and settings != before:
            self.tell(SettingsChange(scope, "config", changed, settings, remote=True))


def _decoded(value: str) -> Any:
    """A value read from Redis as JSON, or `_UNREADABLE` (Redis is shared: anything may be there)."""
    try:
        return json.loads(value)
    except ValueError:
        return _UNREADABLE


def _fields(scope: str, stored: dict[str, str]) -> dict[str, Any]:
    """A scope's fields from Redis, those that are not JSON left out (logged): the rest still count."""
    fields = {name: _decoded(value) for name, value in stored.items()}
    bad = sorted(name for name, value in fields.items() if value is _UNREADABLE)
    if bad:
        logger.warning("settings of %s in Redis: %s ignored (not JSON)", scope, ", ".join(bad))
    return {name: value for name, value in fields.items() if value is not _UNREADABLE}
