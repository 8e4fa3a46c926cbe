"""`--model tiny-sdxl` and `--model tiny-sd15` serve real aiortc peers: frames come back stylized, and a
change of `num_inference_steps` reaches the very next frame the engine takes."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

import numpy as np
import pytest

from pipeline import FrameParams
from server import keys
from server.config import Config
from server.testing.rtc_client import connect, is_plain
from server.testing.servers import start_server, stop_server


@pytest.mark.parametrize(("spec", "family", "default_steps"), [("tiny-sdxl", "sdxl", 1), ("tiny-sd15", "sd15", 4)])
async def test_a_family_twin_serves_peers_and_takes_steps_on_the_next_frame(
    make_config: Callable[..., Config], spec: str, family: str, default_steps: int
) -> None:
    running = await start_server(make_config(model={"id": spec}, engine={"max_batch": 2}))
    client = None
    try:
        async with running.http.get(running.url("/readyz")) as response:
            ready = await response.json()
        assert (ready["model"], ready["family"], ready["default_steps"]) == (spec, family, default_steps)
        engine = running.app[keys.ENGINE].engine
        original = engine.submit
        patched = False
        seen: list[tuple[bool, int]] = []  # (after the PATCH answered, the frame's steps as the engine runs them)

        def spy(key: str, frame: np.ndarray, params: FrameParams, *args: object) -> Future[np.ndarray]:
            seen.append((patched, params.num_inference_steps or engine.model.family.default_steps))
            return original(key, frame, params, *args)  # type: ignore[arg-type]

        engine.submit = spy  # type: ignore[method-assign]
        # The UNet calls the device really made per batch (on the CPU the runner calls the transform eagerly).
        transform = engine.runner.transform
        calls: list[int] = []

        def counting(*args: object, **kwargs: object) -> object:
            calls.append(int(kwargs["num_steps"]))  # type: ignore[call-overload]
            return transform(*args, **kwargs)

        engine.runner.transform = counting
        client = await connect(running.http, running.url("/api/offer"), settings={"strength": 0.8, "prompt": "ink"})
        await client.wait_frames(5)
        assert not any(is_plain(received.frame) for received in client.received[-3:])
        assert {steps for _, steps in seen} == {default_steps}
        assert set(calls) == {default_steps}

        steps = 3
        async with running.http.patch(running.url("/api/settings"), json={"num_inference_steps": steps}) as response:
            assert response.status == 200
        patched = True
        before, batches = len(seen), len(calls)
        await client.wait_frames(5)
        after = [frame_steps for was_patched, frame_steps in seen[before:] if was_patched]
        assert after and set(after) == {steps}, seen
        assert calls[-1] == steps and set(calls[batches:]) <= {default_steps, steps}
        assert not any(is_plain(received.frame) for received in client.received[-3:])
    finally:
        if client is not None:
            await client.close()
        await stop_server(running)
