"""GET /api/stats with a real aiortc peer streaming; the features that plug in; the error log."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import torch

from server import keys
from server.config import Config
from server.observe import keys as observe_keys
from server.observe.stats import RecentErrors, SystemProbe
from server.testing.clips import make_image
from server.testing.rtc_client import connect
from server.testing.servers import RunningServer, start_server, stop_server
from server.testing.waiting import eventually


@pytest.fixture
async def quick_server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    """A server without the warm-up: these tests are about the numbers, not the first frames."""
    running = await start_server(make_config(engine={"warmup": False}))
    yield running
    await stop_server(running)


async def get_stats(server: RunningServer) -> dict[str, Any]:
    async with server.http.get(server.url("/api/stats")) as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


async def test_stats_reflect_a_connected_stream(quick_server: RunningServer) -> None:
    server = quick_server
    idle = await get_stats(server)
    assert idle["streams"] == [] and idle["frames"]["out"] == 0 and idle["latency_ms"]["p95"] is None
    client = await connect(server.http, server.url("/api/offer"))
    try:
        await client.wait_frames(8)
        stats = await get_stats(server)
    finally:
        await client.close()

    assert stats["version"] and stats["uptime_s"] > 0
    engine = stats["engine"]
    model = server.app[keys.ENGINE].engine.model
    assert (engine["state"], engine["model"]) == ("ready", "tiny")
    assert (engine["device"], engine["dtype"]) == (str(model.device), str(model.dtype).removeprefix("torch."))
    assert engine["max_batch"] == 8
    assert engine["batch_size"] >= 1 and engine["throughput_fps"] > 0 and engine["batches"] >= 1

    [stream] = stats["streams"]
    assert stream["id"] == client.stream_id and stream["state"] == "connected"
    per_stream = stream["stats"]
    assert per_stream["frames_out"] >= 8
    assert per_stream["fps_in"] > 0 and per_stream["fps_out"] > 0
    assert 0 < per_stream["latency_p50_ms"] <= per_stream["latency_p95_ms"]
    assert per_stream["latency_ms"] > 0

    frames = stats["frames"]
    assert frames["in"] >= frames["out"] >= 8
    assert set(frames["dropped"]) == {"engine", "send", "error"}
    assert frames["skipped"] == 0 and frames["fps_out"] > 0
    assert 0 < stats["latency_ms"]["p50"] <= stats["latency_ms"]["p95"]

    assert stats["jobs"] == dict.fromkeys(("pending", "processing", "completed", "failed", "cancelled"), 0)
    assert stats["presets"]["watercolor"] == 0  # every preset listed, none applied yet
    system = stats["system"]
    assert 0 < system["ram_used_bytes"] < system["ram_total_bytes"]
    assert system["process_rss_bytes"] > 0 and system["cpu_count"] >= 1
    assert isinstance(system["gpus"], list)
    assert (system["gpu_memory_allocated_bytes"] > 0) == (model.device.type == "cuda")


async def test_stats_show_what_jobs_presets_and_errors_report(quick_server: RunningServer) -> None:
    server = quick_server
    # What the jobs feature does when a job finishes, and what the presets feature plugs in.
    server.app[keys.METRICS].set_jobs({"completed": 1, "processing": 0})

    async def usage() -> dict[str, int]:
        return {"watercolor": 3, "neon": 1}

    server.app[observe_keys.STATS].presets = usage
    try:
        raise RuntimeError("encoder gave up")
    except RuntimeError:
        logging.getLogger("server.jobs").exception("render failed job=%s", "j1")
    logging.getLogger("server.live.track").warning("not an error: not kept")

    stats = await get_stats(server)
    assert stats["jobs"] == {"completed": 1, "processing": 0}
    assert stats["presets"] == {"watercolor": 3, "neon": 1}
    [error] = [e for e in stats["errors"] if e["logger"] == "server.jobs"]
    assert error["message"] == "render failed job=j1"
    assert error["level"] == "ERROR" and error["exception"] == "RuntimeError: encoder gave up"
    assert not [e for e in stats["errors"] if e["logger"] == "server.live.track"]

    async with server.http.get(server.url("/metrics")) as response:
        assert 'stylize_jobs{status="completed"} 1.0' in await response.text()


async def test_the_error_log_stops_listening_when_the_app_stops(make_config: Callable[..., Config]) -> None:
    running = await start_server(make_config(engine={"warmup": False}))
    errors = running.app[observe_keys.STATS].errors
    assert errors in logging.getLogger().handlers
    await stop_server(running)
    assert errors not in logging.getLogger().handlers


def test_recent_errors_keep_only_the_newest() -> None:
    errors = RecentErrors(capacity=3)
    logger = logging.getLogger("test.recent_errors")
    logger.addHandler(errors)
    try:
        for index in range(5):
            logger.error("failure %d stream=%s", index, "abc")
        logger.info("fine")
    finally:
        logger.removeHandler(errors)
    assert [e["message"] for e in errors.entries()] == [f"failure {i} stream=abc" for i in (2, 3, 4)]


async def test_system_probe_reports_cpu_ram_and_gpus() -> None:
    probe = SystemProbe()
    try:
        first = await probe.read()
        busy_until = time.monotonic() + 0.3
        while time.monotonic() < busy_until:  # this process keeps at least one core busy
            pass
        second = await probe.read()
    finally:
        probe.close()
    assert first["cpu_percent"] is None  # the first reading only sets the baseline
    assert 0.0 < second["cpu_percent"] <= 100.0
    assert first["ram_total_bytes"] == second["ram_total_bytes"] > 0
    if not torch.cuda.is_available():
        assert second["gpus"] == []


async def test_monitor_page_and_its_assets_are_served(quick_server: RunningServer) -> None:
    server = quick_server
    async with server.http.get(server.url("/monitor")) as response:
        assert response.status == 200
        page = await response.text()
    assert '<script type="module" src="/static/monitor.js">' in page
    assert "http://" not in page and "https://" not in page  # nothing from a CDN: it works offline
    for asset in ("/static/monitor.js", "/static/monitor.css"):
        async with server.http.get(server.url(asset)) as response:
            assert response.status == 200, asset
            assert "https://" not in await response.text()


async def test_the_average_job_time_and_recent_activity_start_over_on_reset(quick_server: RunningServer) -> None:
    server = quick_server
    logging.getLogger("server.test").error("an error from before the reset")
    form = aiohttp.FormData()
    form.add_field("file", make_image("png"), filename="still.png", content_type="image/png")
    async with server.http.post(server.url("/api/jobs"), data=form) as response:
        assert response.status == 202
    await server.call("PATCH", "/api/settings", {"strength": 0.3})

    async def completed() -> bool:
        return (await get_stats(server))["activity"]["jobs_completed"] == 1

    await eventually(completed, what="the job's completion in /api/stats")
    stats = await get_stats(server)
    activity = stats["activity"]
    assert activity["job_average_s"] is not None and activity["job_average_s"] >= 0
    summaries = [entry["summary"] for entry in activity["recent"]]
    assert "job completed still.png" in summaries and "settings global: strength (http)" in summaries
    assert not any(entry["summary"].startswith("job progress") for entry in activity["recent"])
    assert any(error["message"] == "an error from before the reset" for error in stats["errors"])

    status, reset = await server.call("POST", "/api/stats/reset")
    assert status == 200 and reset["reset_at"] >= activity["reset_at"]
    after = await get_stats(server)
    assert (after["activity"]["jobs_completed"], after["activity"]["job_average_s"]) == (0, None)
    assert after["activity"]["recent"] == [] and after["errors"] == []
    assert after["jobs"] == stats["jobs"], "the job counts are the store's, not a tally"
