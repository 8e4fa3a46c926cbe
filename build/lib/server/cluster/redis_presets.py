"""Custom presets and their apply counts in Redis, shared by every node (`PresetStorage`).

`<p>:presets` maps a preset id to the preset as JSON; `<p>:preset_usage` counts applies per id.
"""

from __future__ import annotations

from redis.asyncio.client import Pipeline

from server.cluster.link import RedisLink
from server.control.presets import Preset


class RedisPresets:
    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._presets = link.key("presets")
        self._usage = link.key("preset_usage")

    async def customs(self) -> list[Preset]:
        stored = await self._link.redis.hgetall(self._presets)
        return [Preset.model_validate_json(stored[preset_id]) for preset_id in sorted(stored)]

    async def find(self, preset_id: str) -> Preset | None:
        stored = await self._link.redis.hget(self._presets, preset_id)
        return None if stored is None else Preset.model_validate_json(stored)

    async def insert(self, preset: Preset) -> bool:
        return bool(await self._link.redis.hsetnx(self._presets, preset.id, _stored(preset)))

    async def replace(self, preset: Preset) -> bool:
        async with self._link.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(self._presets)
            if not await pipe.hexists(self._presets, preset.id):
                return False
            pipe.multi()
            pipe.hset(self._presets, preset.id, _stored(preset))
            await pipe.execute()
        return True

    async def remove(self, preset_id: str) -> bool:
        def write(pipe: Pipeline) -> None:
            pipe.hdel(self._presets, preset_id)
            pipe.hdel(self._usage, preset_id)

        removed, _ = await self._link.transaction(write)
        return bool(removed)

    async def count_apply(self, preset_id: str) -> None:
        await self._link.redis.hincrby(self._usage, preset_id, 1)

    async def usage(self) -> tuple[list[Preset], dict[str, int]]:
        async with self._link.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._presets)
            pipe.hgetall(self._usage)
            stored, counts = await pipe.execute()
        presets = [Preset.model_validate_json(stored[preset_id]) for preset_id in sorted(stored)]
        return presets, {preset_id: int(count) for preset_id, count in counts.items()}


def _stored(preset: Preset) -> str:
    return preset.model_dump_json(exclude={"builtin"})
