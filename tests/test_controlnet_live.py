"""ControlNet per person with real aiortc peers: two streams of one server, one with a canny control
and one without, share batches in which only the first's row carries a scale, and get different
pictures from the same camera; a kind `[control] models` did not load is a 409 naming those it did."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from server import keys
from server.config import Config
from server.testing.rtc_client import RtcClient, connect
from server.testing.servers import start_server, stop_server
from server.testing.waiting import eventually

LOOK = {"prompt": "ink", "strength": 0.9, "seed": 3}


def _picture(client: RtcClient) -> np.ndarray:
    """The newest frame's luma below the index blocks (the one place two cameras' frames differ)."""
    frame = client.received[-1].frame.to_ndarray(format="gray").astype(np.float32)
    return frame[frame.shape[0] // 4 :]


async def test_peers_with_different_controls_share_batches_and_get_different_pictures(
    make_config: Callable[..., Config],
) -> None:
    # Batches wait for the other stream's frame (on a loaded box a lone frame would not wait for it).
    batching = {"max_batch": 2, "max_wait_ms": 200.0}
    config = make_config(model={"id": "tiny-sd15"}, engine=batching, control={"models": ["canny=tiny"]})
    running = await start_server(config)
    clients: list[RtcClient] = []
    try:
        async with running.http.get(running.url("/readyz")) as response:
            assert (await response.json())["control"] == ["canny"]
        engine = running.app[keys.ENGINE].engine
        transform = engine.runner.transform
        batches: list[tuple[int, list[list[float]]]] = []  # (kinds that ran, each row's scales)

        def spy(*args: object, **kwargs: object) -> torch.Tensor:
            scales = kwargs.get("control_scales")
            if isinstance(scales, torch.Tensor):
                batches.append((int(kwargs["control_kinds"]), scales.tolist()))  # type: ignore[call-overload]
            return transform(*args, **kwargs)

        engine.runner.transform = spy
        controlled = await connect(
            running.http, running.url("/api/offer"), settings={**LOOK, "control": {"kind": "canny", "scale": 2.0}}
        )
        plain = await connect(running.http, running.url("/api/offer"), settings=LOOK)
        clients += [controlled, plain]
        await controlled.wait_frames(8)
        await plain.wait_frames(8)

        def shared() -> bool:  # one batch, two looks: the ControlNet ran and only one row took it
            return any(kinds == 1 and sorted(rows) == [[0.0], [2.0]] for kinds, rows in batches)

        await eventually(shared, 30, what=f"a batch of both streams among {len(batches)}")
        # The same camera, the same look but the control: the pictures differ far more than two frames of one stream.
        before = _picture(plain)
        across = np.abs(_picture(controlled) - before).mean()
        await plain.wait_frames(3)
        within = np.abs(_picture(plain) - before).mean()
        assert across > 4.0 and across > 3 * within, (across, within)

        # A kind not loaded is refused, naming the ones loaded; the stream keeps its look.
        url = running.url(f"/api/streams/{plain.stream_id}/settings")
        async with running.http.patch(url, json={"control": {"kind": "depth", "scale": 1.0}}) as response:
            assert response.status == 409
            body = await response.json()
        assert body["detail"] == {"field": "control.kind", "kind": "depth", "loaded": ["canny"]}
        async with running.http.get(url) as response:
            assert (await response.json())["settings"]["control"] == {"kind": "canny", "scale": 0.0}
        bad_controls = ({"kind": "pose", "scale": 1.0}, {"kind": "canny", "scale": 2.5}, {"scale": 1, "edges": 1})
        for bad in bad_controls:
            async with running.http.patch(url, json={"control": bad}) as response:
                assert response.status == 422, bad
                assert (await response.json())["detail"][0]["field"].startswith("control.")
        # Off (scale 0) is always taken, whatever the kind.
        async with running.http.patch(url, json={"control": {"kind": "depth", "scale": 0.0}}) as response:
            assert response.status == 200
    finally:
        for client in clients:
            await client.close()
        await stop_server(running)
