"""A front's `/metrics` and `/api/stats` span the cluster: the workers' figures gathered with its own.

Metrics: every sample of the same name and labels is summed over the front and its workers
(frames, drops, stage times, streams, control updates where they were made ...), except what only
this front can say: its own HTTP requests (the workers' count the relayed ones again) and the job
counts (every node reads the same queue). `stylize_cluster_workers` counts the workers heard from.

Stats: the front's own report with frames and rates summed, every worker's streams (with their
`worker`), the worst worker's latency percentiles, every worker's engine under `workers`, and the
recent errors of all, newest last.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

# Families (as the parser names them: counters without `_total`) this front alone reports.
FRONT_ONLY = frozenset({"stylize_http_requests", "stylize_http_request_duration_seconds", "stylize_jobs"})
ERRORS_KEPT = 50


class _Merged:
    """A collector that yields families summed from several expositions."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def merge_metrics(front: str, workers: list[str], accept: str) -> tuple[bytes, str]:
    """The front's exposition and its workers', summed sample by sample: (body, content type)."""
    families: dict[str, Metric] = {}
    totals: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for index, text in enumerate([front, *workers]):
        for family in text_string_to_metric_families(text):
            if index and family.name in FRONT_ONLY:
                continue
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                totals[family.name] = {}
            samples = totals[family.name]
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # when each node's counter began: no sum means anything
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples[key] = samples.get(key, 0.0) + sample.value
    workers_family = Metric("stylize_cluster_workers", "Workers whose figures this front gathered", "gauge")
    workers_family.add_sample("stylize_cluster_workers", {}, float(len(workers)))
    merged = [workers_family]
    for name, family in families.items():
        for (sample_name, labels), value in totals[name].items():
            family.add_sample(sample_name, dict(labels), value)
        merged.append(family)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(merged))
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def merge_stats(front: dict[str, Any], workers: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """The front's `/api/stats` report with its workers' (each `(registry entry, report)`) folded in."""
    merged = dict(front)
    reports = [report for _, report in workers]
    frames = dict(front.get("frames") or {})
    for report in reports:
        theirs = report.get("frames") or {}
        for count in ("in", "out", "skipped", "fps_in", "fps_out"):
            frames[count] = round((frames.get(count) or 0) + (theirs.get(count) or 0), 2)
        dropped = dict(frames.get("dropped") or {})
        for reason, value in (theirs.get("dropped") or {}).items():
            dropped[reason] = dropped.get(reason, 0) + value
        frames["dropped"] = dropped
    merged["frames"] = frames
    latencies = [report.get("latency_ms") or {} for report in reports]
    merged["latency_ms"] = {
        quantile: max((value for latency in latencies if (value := latency.get(quantile)) is not None), default=None)
        for quantile in ("p50", "p95")
    }
    merged["streams"] = [
        {**stream, "worker": node["id"]} for node, report in workers for stream in report.get("streams") or []
    ]
    merged["workers"] = [
        {
            "id": node["id"],
            "host": node.get("host"),
            "engine": report.get("engine"),
            "frames": report.get("frames"),
            "latency_ms": report.get("latency_ms"),
            "system": report.get("system"),
        }
        for node, report in workers
    ]
    errors = list(front.get("errors") or [])
    # The monitor's reset is the front's: the workers' errors from before it are hidden too.
    reset_at = float((front.get("activity") or {}).get("reset_at") or 0.0)
    for node, report in workers:
        errors.extend(
            {**error, "worker": node["id"]}
            for error in report.get("errors") or []
            if float(error.get("time") or 0.0) >= reset_at
        )
    merged["errors"] = sorted(errors, key=lambda error: float(error.get("time") or 0.0))[-ERRORS_KEPT:]
    return merged
