"""Child processes the server or its harness starts (workers, redis-server, servers under test)."""

from __future__ import annotations

import asyncio
import contextlib


async def stop_child(process: asyncio.subprocess.Process, within_s: float) -> None:
    """SIGTERM, so the child can shut down cleanly (Redis writes out its file, a server closes its
    peers); SIGKILL if it has not exited within `within_s`; reaped either way."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), within_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    await process.wait()
