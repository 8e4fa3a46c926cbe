"""The one-call GPU check stays runnable between devices: its dry run on the CPU, and how it judges its targets."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench.gpu_check import TARGETS, figures, judged
from server.config import ROOT


@pytest.mark.heavy
def test_the_dry_run_on_the_cpu_runs_every_step_and_writes_one_json(tmp_path: Path) -> None:
    done = subprocess.run(
        ["make", "-s", "gpu-check", "DEVICE=cpu", f"GPU_OUT={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [path] = tmp_path.glob("gpu-check-*.json")
    report = json.loads(path.read_text())
    assert report["device"] == "cpu" and report["torch"] and report["name"]
    assert [step["name"] for step in report["steps"]] == [
        "tests",
        "engine tiny",
        "engine tiny-sdxl,tiny-sd15",
        "live",
        "flicker",
        "looks",
        "stream batch",
    ]
    assert all(step["rc"] == 0 for step in report["steps"]), report["steps"]
    assert report["steps"][0]["counts"]["tests"] > 0  # the CUDA tests were collected (and skipped here)
    rows = report["engine"]["tiny"]["engine"]
    assert {row["batch"] for row in rows} == {1, 2} and all(row["frames_per_s"] > 0 for row in rows)
    for twin, family in (("tiny-sdxl", "sdxl"), ("tiny-sd15", "sd15")):
        assert report["engine"][twin]["family"] == family
        assert {row["steps"] for row in report["engine"][twin]["engine"]} == {1, 2}
    assert {(run["peers"], run["strength"]) for run in report["live"]["runs"]} == {(1, 0.0), (1, 0.5)}
    techniques = report["flicker"]["techniques"]
    assert techniques[0]["technique"] == "off" and all(row["frames_per_s"] > 0 for row in techniques)
    runs = report["looks"]["control"]["runs"]
    assert list(runs) == ["off", "one kind on every row", "two kinds mixed"]
    assert runs["off"]["model_time_vs_off"] == 1.0 and all(run["frames_per_s"] > 0 for run in runs.values())
    assert {row["loras"] for row in report["looks"]["engine"]} == {0, 2}
    [stream] = report["stream_batch"]["tiny-sd15"]["results"]
    assert stream["stream"]["frames_behind"] == 1 and stream["max_abs_diff"] < 1e-4


def test_targets_are_read_from_the_figures_and_judged() -> None:
    def row(batch: int, fps: float, graphs: bool = True) -> dict[str, object]:
        return {"batch": batch, "mode": "streaming", "graphs": graphs, "frames_per_s": fps}

    engine = {
        "arch:sd-turbo": {
            "diffusers_baseline": {"1": {"frames_per_s": 40.0}},
            "engine": [row(1, 130.0), row(8, 300.0), row(8, 900.0, graphs=False)],
        }
    }
    live = {
        "runs": [
            {"peers": 12, "strength": 0.0, "latency_ms_p50": 60.0, "fps_out_per_peer": [30.0] * 12},
            {"peers": 12, "strength": 0.5, "latency_ms_p50": 95.0, "fps_out_per_peer": [29.0] * 11 + [27.5]},
        ]
    }
    flicker = {
        "techniques": [
            {"technique": "off", "speed_vs_off": 1.0},
            {"technique": "feedback 0.6", "speed_vs_off": 0.97},
            {"technique": "cached attention 2 frames", "speed_vs_off": 0.8},
        ]
    }
    looks = {
        "control": {"runs": {"one kind on every row": {"model_time_vs_off": 1.45}}},
        "engine": [{"loras": 16, "mode": "streaming", "lora_vs_none": 0.8}],
    }
    verdict = judged(figures(engine, live, flicker, looks))
    assert verdict.keys() == TARGETS.keys()
    assert verdict["sd_turbo_batch1_fps"] == {**verdict["sd_turbo_batch1_fps"], "value": 130.0, "met": True}
    assert (verdict["sd_turbo_batch8_fps"]["value"], verdict["sd_turbo_batch8_fps"]["met"]) == (300.0, False)
    assert (verdict["sd_turbo_vs_diffusers"]["value"], verdict["sd_turbo_vs_diffusers"]["met"]) == (7.5, False)
    assert (verdict["live_12_peers_fps_each"]["value"], verdict["live_12_peers_fps_each"]["met"]) == (27.5, False)
    assert verdict["live_12_peers_p50_over_floor_ms"]["value"] == 35.0
    assert verdict["live_12_peers_p50_over_floor_ms"]["met"] is True
    assert (verdict["feedback_speed_vs_off"]["value"], verdict["feedback_speed_vs_off"]["met"]) == (0.97, True)
    assert verdict["cached_attention_speed_vs_off"]["met"] is False
    assert (verdict["controlnet_model_time_vs_off_x"]["value"], verdict["controlnet_model_time_vs_off_x"]["met"]) == (
        1.45,
        True,
    )
    assert (verdict["loras_16_speed_vs_none"]["value"], verdict["loras_16_speed_vs_none"]["met"]) == (0.8, False)
    assert all(entry["met"] is None for entry in judged(figures({}, None)).values())
