"""LoRAs per person with real aiortc peers: two streams of one server, one wearing a LoRA and one not,
share batches in which only the first's row carries LoRA scales, and get different pictures from the
same camera. LoRA names that cannot be worn are refused naming the field, too many different ones in
use is a 409, OSC moves a worn LoRA's scale, and a preset carrying a ControlNet and a LoRA applies to
a name (one whose LoRA is missing is listed unavailable and refused)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.engine import random_loras
from pipeline import load_model
from server import keys
from server.config import Config
from server.control import keys as control_keys
from server.testing.osc_controller import OscController
from server.testing.rtc_client import RtcClient, connect
from server.testing.servers import RunningServer, start_server, stop_server
from server.testing.waiting import eventually

LOOK = {"prompt": "ink", "strength": 0.9, "seed": 3}
WORN = {"id": "lora-0.safetensors", "scale": 1.0}


@pytest.fixture(scope="module")
def lora_dir(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three random LoRAs for the tiny twin, one for the SDXL twin (another family), a corrupt file."""
    folder = tmp_path_factory.mktemp("loras")
    tiny = load_model("tiny", data_dir=model_cache.parent, device=torch.device("cpu"))
    random_loras(tiny, 3, 4, folder, up=0.5)
    xl = load_model("tiny-sdxl", data_dir=model_cache.parent, device=torch.device("cpu"))
    (folder / "xl").mkdir()
    random_loras(xl, 1, 4, folder / "xl", up=0.5)
    (folder / "corrupt.safetensors").write_bytes(b"not a safetensors file")
    return folder


@pytest.fixture
async def lora_server(make_config: Callable[..., Config], lora_dir: Path) -> RunningServer:
    config = make_config(
        # Batches wait for the other stream's frame (on a loaded box a lone frame would not wait for it).
        engine={"max_batch": 2, "max_wait_ms": 200.0},
        lora={"dir": str(lora_dir), "slots": 2},
        control={"models": ["canny=tiny"]},
    )
    running = await start_server(config)
    yield running
    await stop_server(running)


def _picture(client: RtcClient) -> np.ndarray:
    """The newest frame's luma below the index blocks (the one place two cameras' frames differ)."""
    frame = client.received[-1].frame.to_ndarray(format="gray").astype(np.float32)
    return frame[frame.shape[0] // 4 :]


async def _patch(server: RunningServer, path: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    async with server.http.patch(server.url(path), json=body) as response:
        return response.status, await response.json()


async def test_peers_with_and_without_a_lora_share_batches_and_get_different_pictures(
    lora_server: RunningServer,
) -> None:
    engine = lora_server.app[keys.ENGINE].engine
    transform = engine.runner.transform
    batches: list[list[float]] = []  # per batch with LoRAs: each row's LoRA scale (its columns hold it)

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        scales = kwargs.get("lora_scales")
        if isinstance(scales, torch.Tensor):
            batches.append(scales.amax(dim=1).tolist())
        return transform(*args, **kwargs)

    engine.runner.transform = spy
    clients = []
    try:
        worn = await connect(lora_server.http, lora_server.url("/api/offer"), settings={**LOOK, "loras": [WORN]})
        plain = await connect(lora_server.http, lora_server.url("/api/offer"), settings=LOOK)
        clients += [worn, plain]
        await worn.wait_frames(8)
        await plain.wait_frames(8)

        def shared() -> bool:  # one batch, two looks: only one row wears the LoRA
            return [1.0, 0.0] in [sorted(rows, reverse=True) for rows in batches if len(rows) == 2]

        await eventually(shared, 30, what=f"a batch of both streams among {len(batches)}")
        before = _picture(plain)
        across = np.abs(_picture(worn) - before).mean()
        await plain.wait_frames(3)
        within = np.abs(_picture(plain) - before).mean()
        assert across > 4.0 and across > 3 * within, (across, within)

        # Bad names and files: a 422 naming the field and why; the stream keeps its look.
        url = f"/api/streams/{plain.stream_id}/settings"
        refused = {
            "nope.safetensors": "no 'nope.safetensors' in the LoRA folder",
            "../lora-0.safetensors": "outside the LoRA folder",
            "/etc/passwd": "outside the LoRA folder",
            "corrupt.safetensors": "not a LoRA diffusers can read",
            "xl/lora-0.safetensors": "does not fit this sd-turbo model's UNet",
        }
        for name, why in refused.items():
            status, body = await _patch(lora_server, url, {"loras": [{"id": name}]})
            assert status == 422, (name, body)
            [detail] = body["detail"]  # type: ignore[misc]
            assert detail["field"] == "loras.0.id" and why in detail["message"], (name, detail)
        for bad in ([WORN, WORN], [{"id": "lora-1.safetensors", "scale": 9}], [{"scale": 1}]):
            status, body = await _patch(lora_server, url, {"loras": bad})
            assert status == 422 and str(body["detail"][0]["field"]).startswith("loras"), body  # type: ignore[index]
        # Two slots: lora-0 is worn already, so two more different ones would be three.
        two_more = [{"id": "lora-1.safetensors"}, {"id": "lora-2.safetensors"}]
        status, body = await _patch(lora_server, url, {"loras": two_more})
        assert status == 409 and body["detail"]["slots"] == 2, body  # type: ignore[index]
        async with lora_server.http.get(lora_server.url(url)) as response:
            assert (await response.json())["settings"]["loras"] == []
        # A switch frees the LoRA it replaces: lora-1, then lora-2 in its place, fit beside lora-0.
        for name in ("lora-1.safetensors", "lora-2.safetensors"):
            status, body = await _patch(lora_server, url, {"loras": [{"id": name}]})
            assert status == 200, body

        # OSC moves a worn LoRA's scale; an index it does not wear is dropped and counted.
        osc = lora_server.app[control_keys.OSC]
        panel = OscController(osc.port)
        panel.send(f"/stylize/stream/{worn.stream_id}/lora/scale", 0, 0.25)
        rejected = osc.rejected
        panel.send(f"/stylize/stream/{worn.stream_id}/lora/scale", 1, 0.5)
        await eventually(lambda: osc.rejected == rejected + 1, what="the second LoRA's scale dropped")
        settings = lora_server.app[keys.SETTINGS].effective(worn.stream_id)
        assert [(lora.id, lora.scale) for lora in settings.loras] == [("lora-0.safetensors", 0.25)]
        panel.close()
    finally:
        for client in clients:
            await client.close()


async def test_a_preset_with_a_controlnet_and_a_lora_applies_to_a_name(lora_server: RunningServer) -> None:
    look = {
        "name": "Ink look",
        "category": "custom",
        "template": "an ink drawing of {prompt}",
        "control": {"kind": "canny", "scale": 0.8},
        "loras": [{"id": "lora-1.safetensors", "scale": 0.7}],
    }
    missing = {**look, "loras": [{"id": "gone.safetensors"}]}
    depth = {**look, "control": {"kind": "depth", "scale": 1.0}}
    for preset_id, body in (("ink-look", look), ("gone-look", missing), ("depth-look", depth)):
        async with lora_server.http.post(lora_server.url("/api/presets"), json={**body, "id": preset_id}) as r:
            assert r.status == 201, await r.text()
    async with lora_server.http.get(lora_server.url("/api/presets?category=custom")) as response:
        listed = {p["id"]: p for p in (await response.json())["presets"]}
    assert listed["ink-look"]["available"] is True
    assert listed["gone-look"]["available"] is False and "gone.safetensors" in listed["gone-look"]["unavailable_reason"]
    assert "'depth' is not loaded" in listed["depth-look"]["unavailable_reason"]
    for preset_id in ("gone-look", "depth-look"):
        async with lora_server.http.post(lora_server.url(f"/api/presets/{preset_id}/apply"), json={}) as r:
            assert r.status == 409 and (await r.json())["error"] == "preset unavailable"

    async with lora_server.http.post(lora_server.url("/api/presets/ink-look/apply"), json={"name": "stage"}) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["scope"] == "name:stage"
    async with lora_server.http.get(lora_server.url("/api/outputs/stage/settings")) as response:
        overrides = (await response.json())["overrides"]
    assert overrides["control"] == look["control"] and overrides["loras"] == look["loras"]
    async with lora_server.http.get(lora_server.url("/api/settings")) as response:
        assert (await response.json())["loras"] == []  # the name alone

    # A peer under that name wears both: its batches run the ControlNet and its LoRA.
    engine = lora_server.app[keys.ENGINE].engine
    transform = engine.runner.transform
    seen: list[tuple[int, float]] = []

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        scales = kwargs.get("lora_scales")
        if isinstance(scales, torch.Tensor):
            seen.append((int(kwargs.get("control_kinds", 0)), round(float(scales.amax()), 6)))  # type: ignore[call-overload]
        return transform(*args, **kwargs)

    engine.runner.transform = spy
    client = await connect(lora_server.http, lora_server.url("/api/offer"), name="stage")
    try:
        await client.wait_frames(4)
    finally:
        await client.close()
    assert (1, 0.7) in seen, seen
