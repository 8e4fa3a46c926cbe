"""One call proves the engine on a GPU and measures it: the CUDA tests, the engine benchmark of every
`arch:` model against diffusers (`arch:sdxl-turbo` and `arch:sd15` at 1, 2 and 4 steps), the live
benchmark with client processes, the temporal techniques' cost and the per-person looks' cost
(ControlNet off, on every row, two kinds mixed; none and 16 different LoRAs), into one JSON.

    python -m bench.gpu_check --only tests,engine,live    # on a CUDA machine: about 8 minutes
    python -m bench.gpu_check --only families,flicker     # then about 8 more (a device call is 10 at most)
    python -m bench.gpu_check --only looks,stream_batch   # then about 7 more: looks; StreamDiffusion's stream batch
    python -m bench.gpu_check --device cpu     # the same steps in seconds on tiny models (make test runs it)

Runs from the source tree with `PYTHONPATH` (the `make wheelhouse` wheels for what the machine
lacks); each step is a process of its own with a time limit, so a step that hangs or crashes costs
only its own figures. The JSON (under bench/results/, named after the device) holds the device,
driver, torch and CUDA versions, every step's command, exit status, time and figures, and each
target with whether it was met.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# The architectures with random weights that a GPU run measures (configs under pipeline's archs).
ARCH_MODELS = ["arch:sd-turbo"]
# The other families, each at 1, 2 and 4 steps (README, Benchmarks).
FAMILY_MODELS = ["arch:sdxl-turbo", "arch:sd15"]


@dataclass(frozen=True)
class Plan:
    """What each step runs on this device, and its time limit (s)."""

    tests: list[str]
    engine_models: list[str]
    engine_args: list[str]
    family_models: list[str]  # measured per step count, with `family_args`
    family_args: list[str]
    live_args: list[str]
    # The temporal techniques' cost (frames/s each against off; random weights make the figures
    # themselves meaningless there: those come from the CPU run with the tiny model).
    flicker_args: list[str]
    # The looks' cost: a ControlNet per kind and random rank-16 LoRAs on the SD 1.5 architecture.
    looks_args: list[str]
    # StreamDiffusion's stream batch against the engine's schedule (bench.stream_batch), per step count and streams.
    stream_batch_args: list[str]
    limits: dict[str, float]


def plan_for(device: str) -> Plan:
    if device == "cuda":
        return Plan(
            tests=["tests/test_engine_cuda.py", "-m", "cuda"],
            engine_models=ARCH_MODELS,
            engine_args=["--batch-sizes", "1,2,4,8,16", "--seconds", "6"],
            family_models=FAMILY_MODELS,
            family_args=["--steps", "1,2,4", "--batch-sizes", "1,4", "--seconds", "3"],
            live_args=[
                *("--model", "arch:sd-turbo", "--size", "512", "--peers", "1,4,8,12,16", "--seconds", "10"),
                *("--clients", "8", "--changes", "10", "--engine-batch", "8"),
            ],
            flicker_args=["--model", "arch:sd-turbo", "--size", "512", "--frames", "60", "--streams", "8"],
            looks_args=[
                *("--model", "arch:sd15", "--control", "tiny", "--steps", "1", "--batch-sizes", "16"),
                *("--loras", "0,16"),
            ],
            stream_batch_args=[
                "--model",
                "arch:sd15,arch:sdxl-turbo",
                "--steps",
                "2,4",
                "--batch",
                "1,4,8",
                "--seconds",
                "3",
            ],
            # families: building SDXL's 2.6 B random weights on the CPU alone takes about a minute
            limits={
                **{"tests": 120, "engine": 200, "families": 420, "live": 240, "flicker": 120},
                **{"looks": 300, "stream_batch": 300},
            },
        )
    # The dry run: every step on the CPU with the tiny model, so the script itself never rots.
    return Plan(
        tests=["tests/test_engine_cuda.py"],
        engine_models=["tiny"],
        engine_args=["--batch-sizes", "1,2", "--seconds", "0.2"],
        family_models=["tiny-sdxl", "tiny-sd15"],
        family_args=["--steps", "1,2", "--batch-sizes", "1", "--seconds", "0.2"],
        live_args=[
            *("--model", "tiny", "--size", "64", "--peers", "1", "--seconds", "1", "--clients", "1", "--changes", "0"),
        ],
        flicker_args=["--model", "tiny", "--size", "64", "--frames", "6", "--streams", "2"],
        looks_args=[
            *("--model", "tiny-sd15", "--control", "tiny", "--steps", "1", "--batch-sizes", "2", "--loras", "0,2")
        ],
        stream_batch_args=["--model", "tiny-sd15", "--steps", "2", "--batch", "1", "--seconds", "0.2"],
        limits=dict.fromkeys(PARTS, 120.0),
    )


# The parts of a run, in order; `--only` picks some (two calls when one would pass a call's limit).
PARTS = ("tests", "engine", "families", "live", "flicker", "looks", "stream_batch")

# What a GPU run should show (README, Benchmarks): name -> (what, the target).
TARGETS = {
    "sd_turbo_batch1_fps": ("arch:sd-turbo 512² fp16 with graphs, batch 1, frames/s", 120.0),
    "sd_turbo_batch8_fps": ("arch:sd-turbo 512² fp16 with graphs, batch 8, frames/s", 350.0),
    "sd_turbo_vs_diffusers": ("arch:sd-turbo batch 8 with graphs against diffusers' img2img pipeline", 8.0),
    "live_12_peers_fps_each": ("live, 12 peers of 512² cameras: the slowest peer's fps", 28.0),
    "live_12_peers_p50_over_floor_ms": (
        "live, 12 peers: round trip p50 above the strength-0 floor (ms, at most)",
        40.0,
    ),
    "feedback_speed_vs_off": ("latent feedback 0.6, 8 streams of 512²: frames/s against off", 0.95),
    # Batch time at most 1.15x the plain one.
    "cached_attention_speed_vs_off": ("cached attention 2 frames, 8 streams of 512²: frames/s against off", 0.87),
    "controlnet_model_time_vs_off_x": (
        "arch:sd15 batch 16, one ControlNet on every row: the model stage against none (x, at most)",
        1.6,
    ),
    # Batch time at most 1.2x none's.
    "loras_16_speed_vs_none": ("arch:sd15 batch 16, 16 different LoRAs: frames/s against none", 0.83),
}


def run_step(name: str, command: list[str], limit_s: float, env: dict[str, str]) -> dict[str, Any]:
    began = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit_s)
        rc, tail = done.returncode, (done.stdout + done.stderr)[-4000:]
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"") + (e.stderr or b"")
        rc, tail = 124, (output.decode(errors="replace") if isinstance(output, bytes) else str(output))[-4000:]
    step = {"name": name, "command": " ".join(command), "rc": rc, "seconds": round(time.perf_counter() - began, 1)}
    if rc != 0:
        step["output_tail"] = tail
    return step


def newest(folder: Path, prefix: str) -> dict[str, Any] | None:
    found = sorted(folder.glob(f"{prefix}*.json"))
    return json.loads(found[-1].read_text()) if found else None


def junit_counts(path: Path) -> dict[str, int]:
    if not path.is_file():
        return {}
    suite = ElementTree.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")  # type: ignore[assignment]
    if suite is None:
        return {}
    return {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}


def device_facts(device: str) -> dict[str, Any]:
    import torch  # here: --help and the plan need no torch

    facts: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    if device == "cuda":
        facts.update(
            name=torch.cuda.get_device_name(0),
            cuda=torch.version.cuda,
            memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
            driver=_driver(),
        )
    else:
        facts["name"] = platform.processor() or platform.machine()
    return facts


def _driver() -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def figures(
    engine: dict[str, dict[str, Any]],
    live: dict[str, Any] | None,
    flicker: dict[str, Any] | None = None,
    looks: dict[str, Any] | None = None,
) -> dict[str, float | None]:
    """The targets' figures from the benchmarks' JSON (None where a step did not give one)."""
    sd = engine.get("arch:sd-turbo")

    def streaming(batch: int) -> float | None:
        rows = [r for r in (sd or {}).get("engine", []) if r["batch"] == batch and r["graphs"]]
        rows = [r for r in rows if r["mode"] == "streaming"]
        return rows[0]["frames_per_s"] if rows else None

    batch8 = streaming(8)
    baseline = (sd or {}).get("diffusers_baseline", {}).get("1", {}).get("frames_per_s")  # by step count
    fps_each = over_floor = None
    if live is not None:
        by = {(run["peers"], run["strength"] > 0): run for run in live.get("runs", [])}
        styled, floor = by.get((12, True)), by.get((12, False))
        if styled is not None:
            fps_each = min(styled["fps_out_per_peer"])
        if styled is not None and floor is not None:
            over_floor = round(styled["latency_ms_p50"] - floor["latency_ms_p50"], 1)
    return {
        "sd_turbo_batch1_fps": streaming(1),
        "sd_turbo_batch8_fps": batch8,
        "sd_turbo_vs_diffusers": round(batch8 / baseline, 2) if batch8 and baseline else None,
        "live_12_peers_fps_each": fps_each,
        "live_12_peers_p50_over_floor_ms": over_floor,
        "feedback_speed_vs_off": _speed(flicker, "feedback 0.6"),
        "cached_attention_speed_vs_off": _speed(flicker, "cached attention 2 frames"),
        "controlnet_model_time_vs_off_x": _look(looks, "one kind on every row"),
        "loras_16_speed_vs_none": _loras(looks, 16),
    }


def _loras(looks: dict[str, Any] | None, count: int) -> float | None:
    rows = [r for r in (looks or {}).get("engine", []) if r.get("loras") == count and r["mode"] == "streaming"]
    return rows[0].get("lora_vs_none") if rows else None


def _look(looks: dict[str, Any] | None, run: str) -> float | None:
    row = ((looks or {}).get("control") or {}).get("runs", {}).get(run)
    return row["model_time_vs_off"] if row else None


def _speed(flicker: dict[str, Any] | None, technique: str) -> float | None:
    rows = [row for row in (flicker or {}).get("techniques", []) if row["technique"] == technique]
    return rows[0]["speed_vs_off"] if rows else None


def judged(values: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    out = {}
    for key, (what, target) in TARGETS.items():
        value = values.get(key)
        at_most = key.endswith(("_ms", "_x"))
        met = None if value is None else (value <= target if at_most else value >= target)
        out[key] = {"what": what, "target": target, "value": value, "met": met}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON")
    parser.add_argument("--data-dir", type=Path, default=None, help="models and server data (default: a temp dir)")
    parser.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"the parts to run, comma-separated ({', '.join(PARTS)}): a device call is at most 10 minutes",
    )
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    if not only <= set(PARTS):
        parser.error(f"--only takes {', '.join(PARTS)}, got {args.only}")
    plan = plan_for(args.device)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        work = Path(scratch)
        data = args.data_dir or work / "data"
        junit = work / "tests.xml"
        planned: list[tuple[str, list[str], float]] = []  # (name, command, time limit), in order
        if "tests" in only:
            tests = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
            planned.append(("tests", [*tests, *plan.tests], plan.limits["tests"]))
        # Each run is one process (the families' models in one: a process start costs seconds on a CPU).
        runs = [([model], plan.engine_args, plan.limits["engine"]) for model in plan.engine_models if "engine" in only]
        if "families" in only:
            runs.append((plan.family_models, plan.family_args, plan.limits["families"]))
        engine_outs = {}
        for models, model_args, limit in runs:
            spec = ",".join(models)
            out = work / f"engine-{spec.replace(':', '-').replace(',', '+')}"
            engine_outs.update(dict.fromkeys(models, out))
            command = [sys.executable, "-m", "bench.engine", "--model", spec, "--data-dir", str(data)]
            planned.append((f"engine {spec}", [*command, *model_args, "--out", str(out)], limit))
        outs = {part: work / part for part in ("live", "flicker", "looks", "stream_batch")}
        benches = {
            "live": ["bench.live", *plan.live_args],
            "flicker": ["bench.flicker", *plan.flicker_args],
            "looks": ["bench.engine", *plan.looks_args, "--seconds", "3" if args.device == "cuda" else "0.2"],
            "stream_batch": ["bench.stream_batch", *plan.stream_batch_args],
        }
        for part, bench in benches.items():
            if part in only:
                command = [sys.executable, "-m", *bench, "--data-dir", str(data), "--out", str(outs[part])]
                planned.append((part.replace("_", " "), command, plan.limits[part]))
        # On a GPU the steps are timed, so one at a time; the CPU dry run only proves they run: two at once.
        with ThreadPoolExecutor(max_workers=1 if args.device == "cuda" else 2) as pool:
            steps = list(pool.map(lambda step: run_step(step[0], step[1], step[2], env), planned))
        if "tests" in only:
            steps[0]["counts"] = junit_counts(junit)
        engine: dict[str, dict[str, Any]] = {}
        for model, out in engine_outs.items():
            result = newest(out, f"engine-{model.replace(':', '-').replace('/', '-')}-")
            if result is not None:
                engine[model] = result
        live = newest(outs["live"], "live-")
        flicker = newest(outs["flicker"], "flicker-")
        looks = newest(outs["looks"], "engine-")
        found = [json.loads(path.read_text()) for path in sorted(outs["stream_batch"].glob("stream-batch-*.json"))]
        stream_batch = {result["model"]: result for result in found}  # one JSON per model
    facts = device_facts(args.device)
    report = {
        "command": " ".join(["python -m bench.gpu_check", *(sys.argv[1:] if argv is None else argv)]),
        **facts,
        "steps": steps,
        "engine": engine,
        "live": live,
        "flicker": flicker,
        "looks": looks,
        "stream_batch": stream_batch,
        "targets": judged(figures(engine, live, flicker, looks)) if args.device == "cuda" else {},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in str(facts["name"]).lower()).strip("-")
    path = args.out / f"gpu-check-{slug}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    failed = [step["name"] for step in steps if step["rc"] != 0]
    sys.stdout.write(f"{path}\nsteps failed: {failed or 'none'}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
