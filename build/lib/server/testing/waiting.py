"""`eventually`: the one way tests and benchmarks wait for something to become true."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def eventually(
    predicate: Callable[[], Awaitable[T]], timeout: float = ..., *, interval: float = ..., what: str = ...
) -> T: ...


@overload
async def eventually(
    predicate: Callable[[], T], timeout: float = ..., *, interval: float = ..., what: str = ...
) -> T: ...


async def eventually(
    predicate: Callable[[], Any], timeout: float = 10.0, *, interval: float = 0.02, what: str = ""
) -> Any:
    """Call `predicate` (plain or async) until it returns something truthy, and return that.

    Raises `TimeoutError` naming `what` when `timeout` seconds pass first.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise TimeoutError(f"{what or 'the condition'} did not hold within {timeout} s")
        await asyncio.sleep(interval)
