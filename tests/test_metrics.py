"""Prometheus metrics: the collectors alone, then /metrics before and after a real aiortc peer streams."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from pipeline import BatchReport
from server import keys
from server.config import Config
from server.control.settings import SettingsChange, StyleSettings
from server.observe.metrics import DROP_REASONS, STAGES, Metrics
from server.observe.recent_window import RecentWindow
from server.testing.rtc_client import connect
from server.testing.servers import RunningServer, start_server, stop_server
from server.testing.waiting import eventually

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(server: RunningServer) -> Samples:
    async with server.http.get(server.url("/metrics")) as response:
        assert response.status == 200
        return parse(await response.text())


def changes(before: Samples, after: Samples) -> Callable[..., float]:
    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    return delta


# -- the collectors alone ---------------------------------------------------------------------


def test_every_metric_of_the_design_is_exposed_with_its_labels() -> None:
    samples = parse(Metrics().render("*/*")[0].decode())
    names = {name for name, _ in samples}
    for name in (
        "stylize_frames_in_total",
        "stylize_frames_out_total",
        "stylize_frames_skipped_total",
        "stylize_batch_size_count",
        "stylize_frame_latency_seconds_count",
        "stylize_streams_active",
        "stylize_osc_rejected_total",
        "stylize_gpu_memory_bytes",
        "stylize_stream_flicker_count",
    ):
        assert name in names, name
    for reason in DROP_REASONS:
        assert ("stylize_frames_dropped_total", frozenset({("reason", reason)})) in samples
    for stage in STAGES:
        assert ("stylize_stage_seconds_count", frozenset({("stage", stage)})) in samples
    # Stage buckets start at 1 ms.
    first = min(
        float(dict(labels)["le"])
        for name, labels in samples
        if name == "stylize_stage_seconds_bucket" and ("stage", "model") in labels
    )
    assert first == 0.001
    assert ("stylize_control_updates_total", frozenset({("source", "osc")})) in samples
    if not torch.cuda.is_available():
        assert value(samples, "stylize_gpu_memory_bytes") == 0.0


def test_batches_reported_from_another_thread_are_counted() -> None:
    metrics = Metrics()
    report = BatchReport(size=3, skipped=1, stages={"preprocess": 0.002, "model": 0.02}, flicker=[1.2, 8.0])
    workers = [threading.Thread(target=metrics.observe_batch, args=(report,)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    samples = parse(metrics.render("")[0].decode())
    assert value(samples, "stylize_batch_size_count") == 4
    assert value(samples, "stylize_batch_size_sum") == 12
    assert value(samples, "stylize_frames_skipped_total") == 4
    assert value(samples, "stylize_stage_seconds_count", stage="model") == 4
    assert value(samples, "stylize_stage_seconds_count", stage="postprocess") == 0
    assert metrics.recent_batches.mean() == 3
    assert value(samples, "stylize_stream_flicker_count") == 8  # two streams measured in each batch
    assert value(samples, "stylize_stream_flicker_bucket", le="1.5") == 4


def test_jobs_gauge_and_osc_counter_are_set_by_their_features() -> None:
    metrics = Metrics()
    metrics.set_jobs({"queued": 2, "running": 1})
    metrics.set_jobs({"done": 3})
    metrics.osc_dropped("value")
    samples = parse(metrics.render("")[0].decode())
    assert value(samples, "stylize_jobs", status="done") == 3
    assert value(samples, "stylize_jobs", status="queued") == 0  # a status left out reads 0
    assert metrics.jobs_by_status() == {"done": 3}
    assert value(samples, "stylize_osc_rejected_total", reason="value") == 1
    assert value(samples, "stylize_osc_rejected_total", reason="depth") == 0  # every reason listed from the start


def test_settings_changes_count_by_source() -> None:
    metrics = Metrics()
    settings = StyleSettings()
    metrics.count_control_update(SettingsChange("global", "osc", {"strength": 0.1}, settings))
    metrics.count_control_update(SettingsChange("abc", "osc", {"prompt": "x"}, settings))
    assert metrics.value("stylize_control_updates_total", {"source": "osc"}) == 2
    assert metrics.value("stylize_control_updates_total", {"source": "http"}) == 0


def test_openmetrics_is_served_to_scrapers_that_ask_for_it() -> None:
    body, content_type = Metrics().render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_recent_window_rates_percentiles_and_expiry() -> None:
    window = RecentWindow(seconds=5.0)
    assert window.percentile(95) is None and window.mean() is None and window.rate() == 0.0
    for latency in range(1, 101):
        window.add(latency / 1000.0)
    assert window.percentile(50) == pytest.approx(0.050)
    assert window.percentile(95) == pytest.approx(0.095)
    assert window.percentile(100) == pytest.approx(0.100)
    assert window.mean() == pytest.approx(0.0505)
    with pytest.raises(ValueError, match="101"):
        window.percentile(101)

    short = RecentWindow(seconds=0.05)
    short.add()
    assert short.values() == [1.0]
    threading.Event().wait(0.1)
    assert short.values() == []


# -- the running server -----------------------------------------------------------------------


@pytest.fixture
async def quick_server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    """A server without the warm-up, where no peer streams."""
    running = await start_server(make_config(engine={"warmup": False}))
    yield running
    await stop_server(running)


async def test_metrics_endpoint_sends_the_prometheus_content_type(quick_server: RunningServer) -> None:
    async with quick_server.http.get(quick_server.url("/metrics")) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "stylize_frames_in_total" in await response.text()


@pytest.fixture
async def warmed_server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    """A server that ran its warm-up (two buckets, to keep it short)."""
    running = await start_server(make_config(engine={"warmup": True, "max_batch": 2}))
    yield running
    await stop_server(running)


async def test_counters_and_histograms_move_with_a_streaming_peer(warmed_server: RunningServer) -> None:
    server = warmed_server
    engine = server.app[keys.ENGINE].engine
    batches_before = engine.batches
    before = await scrape(server)
    assert value(before, "stylize_batch_size_count") == 0  # the warm-up batches are not served work
    client = await connect(server.http, server.url("/api/offer"))
    try:
        await client.wait_frames(10)
        during = await scrape(server)
        assert value(during, "stylize_streams_active") == 1
        # The stream's flicker figure, from its second model frame on: in its stats and the histogram.
        status, listed = await server.call("GET", "/api/streams")
        assert status == 200 and listed["streams"][0]["stats"]["flicker"] > 0
        status, stats = await server.call("GET", "/api/stats")
        assert status == 200 and stats["streams"][0]["stats"]["flicker"] > 0
        assert value(during, "stylize_stream_flicker_count") > 0
        # Hang up on the server's side: once the call returns the stream's counting is over.
        async with server.http.delete(server.url(f"/api/streams/{client.stream_id}")) as response:
            assert response.status == 200
    finally:
        await client.close()

    async def settled() -> Samples | None:
        # A batch still in flight when the stream closed lands a moment later: wait for the engine's count.
        samples = await scrape(server)
        return samples if value(samples, "stylize_batch_size_count") == engine.batches - batches_before else None

    after = await eventually(settled, what="the engine's batches all in the histogram")
    delta = changes(before, after)

    received = len(client.received)
    frames_out = delta("stylize_frames_out_total")
    assert frames_out >= received >= 10
    assert delta("stylize_frames_in_total") >= frames_out
    dropped = sum(delta("stylize_frames_dropped_total", reason=reason) for reason in DROP_REASONS)
    assert dropped <= delta("stylize_frames_in_total") - frames_out
    # One latency and one send time per frame out; one receive time per frame sent to the engine.
    assert delta("stylize_frame_latency_seconds_count") == frames_out
    assert delta("stylize_frame_latency_seconds_bucket", le="+Inf") == frames_out
    assert delta("stylize_frame_latency_seconds_sum") > 0
    assert delta("stylize_stage_seconds_count", stage="send") == frames_out
    assert delta("stylize_stage_seconds_count", stage="receive") >= frames_out
    # Every batch the engine ran is in the histogram, warm-up excluded; each frame out was in one.
    batches = delta("stylize_batch_size_count")
    assert batches == engine.batches - batches_before
    assert 1 <= batches <= frames_out + dropped + 1
    assert delta("stylize_batch_size_sum") >= frames_out
    for stage in ("preprocess", "model", "postprocess"):  # strength 0.5: every batch ran the model
        assert delta("stylize_stage_seconds_count", stage=stage) == batches
        assert delta("stylize_stage_seconds_sum", stage=stage) > 0
    assert delta("stylize_frames_skipped_total") == 0  # the similarity filter is off by default
    assert value(after, "stylize_streams_active") == 0
    # The engine's busy time and the idle gaps between its batches: one gap per batch.
    assert delta("stylize_engine_busy_seconds_total") > 0
    assert delta("stylize_engine_idle_gap_seconds_count") == batches


async def test_control_updates_count_each_http_change_once(quick_server: RunningServer) -> None:
    server = quick_server
    before = await scrape(server)
    async with server.http.patch(server.url("/api/settings"), json={"strength": 0.3}) as response:
        assert response.status == 200
    async with server.http.patch(server.url("/api/settings"), json={"strength": 7}) as response:
        assert response.status == 422  # refused: not a change
    delta = changes(before, await scrape(server))
    assert delta("stylize_control_updates_total", source="http") == 1
    assert delta("stylize_control_updates_total", source="osc") == 0


def test_values_are_read_without_asking_the_gpu() -> None:
    metrics = Metrics()
    asked: list[bool] = []
    metrics.gpu_memory.set_function(lambda: asked.append(True) or 0.0)
    metrics.frame_received()
    metrics.frame_dropped("engine")
    assert metrics.value("stylize_frames_in_total") == 1
    assert metrics.value("stylize_frames_dropped_total", {"reason": "engine"}) == 1
    assert metrics.value("stylize_frames_dropped_total", {"reason": "send"}) == 0
    assert metrics.value("stylize_batch_size_count") == 0
    assert asked == []
    assert metrics.value("stylize_gpu_memory_bytes") == 0.0 and asked == [True]


async def test_http_requests_are_counted_by_route_template_method_and_status(quick_server: RunningServer) -> None:
    server = quick_server
    for path in ("/api/jobs/" + "0" * 32, "/api/jobs/" + "1" * 32, "/no/such/page/abc123", "/static/js/api.js"):
        async with server.http.get(server.url(path)):
            pass
    async with server.http.patch(server.url("/api/settings"), json={"strength": 7}):
        pass
    async with server.http.request("PROPFIND", server.url("/api/settings")):
        pass
    samples = await scrape(server)
    assert value(samples, "stylize_http_requests_total", route="/api/jobs/{job_id}", method="GET", status="404") == 2
    assert value(samples, "stylize_http_requests_total", route="/api/settings", method="PATCH", status="422") == 1
    assert value(samples, "stylize_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert value(samples, "stylize_http_requests_total", route="/static/{filename}", method="GET", status="200") == 1
    assert value(samples, "stylize_http_requests_total", route="unmatched", method="other", status="405") == 1
    assert value(samples, "stylize_http_request_duration_seconds_count", route="/api/jobs/{job_id}") == 2
    routes = {dict(labels).get("route") for name, labels in samples if name == "stylize_http_requests_total"}
    assert not any("0000" in route or "abc123" in route for route in routes if route)  # no ids in labels
