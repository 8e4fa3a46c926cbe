"""A model per worker: a cluster of real processes (Redis, a tiny worker, a tiny-sd15 worker, a front)
places an offer (or a WHIP ingest) that asks for a model on a worker that runs it, and answers 409
naming the models on offer when none does."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from server.testing.cluster import ClusterOnThisBox, workers_ready
from server.testing.rtc_client import SdpRefused, connect, offer_sdp, whip_publish

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


def _data_dir(root: Path, name: str, models: Path) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "models").symlink_to(models)
    return folder


async def test_an_offer_lands_on_a_worker_that_runs_the_model_it_asks_for(tmp_path: Path, model_cache: Path) -> None:
    env = {"STYLIZE_ENGINE_WARMUP": "false", "STYLIZE_MODEL_RESOLUTION": "64"}
    box = ClusterOnThisBox(tmp_path, _data_dir(tmp_path, "front-data", model_cache), env=env, prefix="models")
    await box.start_redis()
    async with aiohttp.ClientSession() as http:
        try:
            for index, model in enumerate(("tiny", "tiny-sd15")):
                data = _data_dir(tmp_path, f"worker-{index}", model_cache)
                await box.start("worker", data_dir=data, model=model)
            front = await box.start("front")
            workers = await workers_ready(http, front, 2)
            by_model = {worker["model"]: worker for worker in workers}
            assert {model: worker["family"] for model, worker in by_model.items()} == {
                "tiny": "sd-turbo",
                "tiny-sd15": "sd15",
            }

            for asked, runs_on in (("tiny-sd15", "tiny-sd15"), ("sd15", "tiny-sd15"), ("sd-turbo", "tiny")):
                client = await connect(http, f"{front.url}/api/offer", size=(128, 96), model=asked)
                try:
                    async with http.get(f"{by_model[runs_on]['url']}/api/streams") as response:
                        streams = (await response.json())["streams"]
                    assert client.stream_id in [stream["id"] for stream in streams], asked
                    await client.wait_frames(3)
                finally:
                    await client.close()

            # WHIP asks with ?model= (OBS sends only the SDP).
            published = await whip_publish(http, f"{front.url}/api/whip/stage?model=sd15")
            try:
                async with http.get(f"{by_model['tiny-sd15']['url']}/api/streams") as response:
                    streams = (await response.json())["streams"]
                assert published.stream_id in [stream["id"] for stream in streams]
            finally:
                await published.close()

            offer = {"sdp": await offer_sdp(), "type": "offer", "model": "sdxl"}
            async with http.post(f"{front.url}/api/offer", json=offer) as response:
                assert response.status == 409
                body = await response.json()
            assert body == {
                "error": "model not on offer",
                "detail": {"model": "sdxl", "on_offer": ["tiny", "tiny-sd15"]},
            }

            # A WHIP encoder sends only SDP: its name's saved model setting places it, or refuses it.
            async with http.patch(f"{front.url}/api/outputs/booth/settings", json={"model": "sd15"}) as response:
                assert response.status == 200
            publisher = await whip_publish(http, f"{front.url}/api/whip/booth")
            try:
                async with http.get(f"{by_model['tiny-sd15']['url']}/api/streams") as response:
                    streams = (await response.json())["streams"]
                assert publisher.stream_id in [stream["id"] for stream in streams]
            finally:
                await publisher.close()
            async with http.patch(f"{front.url}/api/outputs/booth/settings", json={"model": "sdxl"}) as response:
                assert response.status == 200
            with pytest.raises(SdpRefused) as refused:
                await whip_publish(http, f"{front.url}/api/whip/booth")
            assert refused.value.status == 409 and json.loads(refused.value.body)["detail"]["model"] == "sdxl"
        finally:
            await box.close()
