"""Engine throughput and latency per model, step count and batch size, against diffusers' own img2img
pipeline (the model's family's, with the LCM scheduler and the same timesteps) per frame.

    python -m bench.engine --model tiny --batch-sizes 1,2,4,8 --seconds 5
    python -m bench.engine --model tiny,tiny-sd15,tiny-sdxl --steps 1,2,4 --seconds 3      # every family, CPU
    python -m bench.engine --model arch:sd-turbo --batch-sizes 1,2,4,8,16 --seconds 10   # on a GPU
    python -m bench.engine --model arch:sdxl-turbo,arch:sd15 --steps 1,2,4 --batch-sizes 1,4 --seconds 10
    python -m bench.engine --model tiny-sd15 --control tiny --batch-sizes 8 --seconds 5      # ControlNet costs
    python -m bench.engine --model arch:sd15 --batch-sizes 16 --loras 0,1,4,16 --seconds 10  # LoRAs per row

Runs from the source tree with any Python that has torch, diffusers and transformers (no venv, no
network): it imports nothing else but numpy and `pipeline/`. Each batch size is measured twice:
"lockstep" (every stream sends a frame, waits for all of them: one batch at a time, the figure
earlier runs reported) and "streaming" (every stream sends a new frame whenever a batch comes back,
as cameras faster than the engine do: the next batch is always waiting, so batches are pipelined).
On CUDA both run with the engine's CUDA graphs on and off. With `--control` (`[control] models`
entries, comma-separated, or `tiny`) the largest batch also runs with ControlNet off, one kind on
every row, and two kinds mixed (alternate rows), and the model stage's time against off is reported.
Writes JSON (command line, device,
versions, results) under bench/results/.

With `--loras 0,1,4,16` each configuration also runs with that many different random LoRAs (rank
`--lora-rank`, on the attention layers, made here and read through the engine's `load_lora`) worn
round-robin by the streams (0: none), and `lora_vs_none` gives each count's frames/s over none's.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline
from safetensors.torch import save_file

from bench.result_file import save
from pipeline.contract import BatchReport, FrameParams
from pipeline.control import ControlNets, load_controlnets
from pipeline.engine import Engine
from pipeline.lora_files import covered_layers
from pipeline.models import ModelBundle, default_device, default_dtype, load_model
from pipeline.onestep import row_timesteps

RESULTS = Path(__file__).resolve().parent / "results"
# The ControlNet runs: label -> the kinds rows take in turn (none: off).
CONTROL_RUNS = {"off": (), "one kind on every row": ("canny",), "two kinds mixed": ("canny", "depth")}


class _Streams:
    """`streams` keys sending one frame each per round; records latency from submit to result."""

    def __init__(
        self,
        engine: Engine,
        streams: int,
        frame: np.ndarray,
        steps: int,
        loras: tuple[str, ...] = (),
        kinds: tuple[str, ...] = (),
    ) -> None:
        self._engine = engine
        self._frame = frame
        self.count = streams
        self._params = [
            FrameParams(
                prompt="a watercolor painting",
                strength=0.5,
                seed=i,
                num_inference_steps=steps,
                loras=((loras[i % len(loras)], 0.8),) if loras else (),
                control_kind=kinds[i % len(kinds)] if kinds else "",
                control_scale=1.0 if kinds else 0.0,
            )
            for i in range(streams)
        ]
        self._lock = threading.Lock()
        self.latencies: list[float] = []
        self.futures: list[Future[np.ndarray]] = []

    def send_round(self) -> list[Future[np.ndarray]]:
        sent = time.perf_counter()
        futures = [self._engine.submit(f"bench-{i}", self._frame, p) for i, p in enumerate(self._params)]
        for future in futures:
            future.add_done_callback(lambda f: self._landed(f, sent))
        with self._lock:
            self.futures.extend(futures)
        return futures

    def _landed(self, future: Future[np.ndarray], sent: float) -> None:
        if future.exception() is None:
            with self._lock:
                self.latencies.append(time.perf_counter() - sent)


class _Feeder:
    """The engine's `on_batch`: keeps the batch reports and, while streaming, sends the next round."""

    def __init__(self) -> None:
        self.reports: list[BatchReport] = []
        self.streams: _Streams | None = None  # set while streaming

    def on_batch(self, report: BatchReport) -> None:
        self.reports.append(report)
        if self.streams is not None:
            self.streams.send_round()


def random_loras(model: ModelBundle, count: int, rank: int, folder: Path, up: float = 0.01, seed: int = 0) -> list[str]:
    """`count` random LoRAs of `rank` on the model's attention layers, as .safetensors files in PEFT's
    layout (which diffusers' loaders read as they read a trained one); `up` sizes their up weights
    (how much a LoRA changes the picture: a timing needs none to speak of, a test a visible one)."""
    generator = torch.Generator().manual_seed(seed)
    layers = {name: shape for name, shape in covered_layers(model.unet).items() if ".to_" in name}
    sources = []
    for index in range(count):
        state = {}
        for name, (width_in, width_out) in layers.items():
            state[f"unet.{name}.lora_A.weight"] = torch.randn((rank, width_in), generator=generator) / width_in**0.5
            state[f"unet.{name}.lora_B.weight"] = torch.randn((width_out, rank), generator=generator) * up
        path = folder / f"lora-{index}.safetensors"
        save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()}, path)
        sources.append(str(path))
    return sources


def bench_engine(
    model: ModelBundle,
    batch: int,
    steps: int,
    seconds: float,
    frame: np.ndarray,
    *,
    graphs: bool,
    compile_mode: str,
    control: ControlNets | None = None,
    kinds: tuple[str, ...] = (),
    loras: tuple[str, ...] = (),
    lora_max_rank: int = 64,
) -> list[dict[str, Any]]:
    feeder = _Feeder()
    engine = Engine(
        model,
        max_batch=batch,
        max_wait_ms=50.0,
        compile_mode=compile_mode,
        cuda_graphs=graphs,
        control=control,
        on_batch=feeder.on_batch,
        lora_slots=max(8, len(loras)),
        lora_max_rank=lora_max_rank,
    )
    for source in loras:
        engine.load_lora(source)  # read off the engine thread, as the server does when a LoRA is picked
    began = time.perf_counter()
    engine.start(warmup=True)
    engine.wait_ready()
    if loras:  # the LoRA graphs are recorded (and slots filled) on first use: not in the figures
        for future in _Streams(engine, batch, frame, steps, loras).send_round():
            future.result()
        feeder.reports = []
    warmup_s = time.perf_counter() - began
    rows = []
    try:
        # Lockstep: one round at a time.
        streams = _Streams(engine, batch, frame, steps, loras, kinds)
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or not streams.latencies:
            for future in streams.send_round():
                future.result()
        rows.append(_row("lockstep", streams, feeder.reports, time.perf_counter() - start))

        # Streaming: every batch that comes back sends the next round; two rounds go in at the start
        # so one is always waiting behind the one in flight.
        streams = _Streams(engine, batch, frame, steps, loras, kinds)
        feeder.reports = []
        start = time.perf_counter()
        feeder.streams = streams
        streams.send_round()
        while engine.pending and time.perf_counter() - start < seconds:
            time.sleep(0.0005)
        streams.send_round()
        time.sleep(seconds)
        feeder.streams = None
        for future in list(streams.futures):
            future.exception()
        rows.append(_row("streaming", streams, feeder.reports, time.perf_counter() - start))
    finally:
        engine.stop()
    for row in rows:
        row.update(steps=steps, graphs=engine.cuda_graphs, warmup_s=round(warmup_s, 3), cpu_threads=engine.cpu_threads)
        row.update(loras=len(loras))
    return rows


def _row(mode: str, streams: _Streams, reports: list[BatchReport], elapsed: float) -> dict[str, Any]:
    latencies = streams.latencies
    busy = sum(r.busy_s for r in reports)
    return {
        "mode": mode,
        "batch": streams.count,
        "frames": len(latencies),
        "frames_per_s": round(len(latencies) / elapsed, 2),
        "latency_ms_p50": round(statistics.median(latencies) * 1000, 3),
        "latency_ms_p95": round(float(np.percentile(latencies, 95)) * 1000, 3),
        "mean_batch": round(statistics.fmean(r.size for r in reports), 2) if reports else 0.0,
        "busy_ratio": round(busy / elapsed, 3),
        "idle_ms_p50": round(statistics.median(r.idle_s for r in reports) * 1000, 3) if reports else 0.0,
        "stage_ms_p50": {
            stage: round(statistics.median(r.stages[stage] for r in reports if stage in r.stages) * 1000, 3)
            for stage in ("preprocess", "model", "postprocess")
            if any(stage in r.stages for r in reports)
        },
    }


def bench_diffusers(model: ModelBundle, steps: int, seconds: float) -> dict[str, Any]:
    """The baseline: the family's diffusers img2img pipeline called once per frame, the same timesteps."""
    parts: dict[str, Any] = {
        "vae": model.vae,
        "text_encoder": model.text_encoder,
        "tokenizer": model.tokenizer,
        "unet": model.unet,
        "scheduler": model.scheduler,
    }
    pipe: StableDiffusionImg2ImgPipeline | StableDiffusionXLImg2ImgPipeline
    if model.family.pooled:
        parts |= {"text_encoder_2": model.text_encoder_2, "tokenizer_2": model.tokenizer_2}
        pipe = StableDiffusionXLImg2ImgPipeline(**parts, add_watermarker=False)
    else:
        pipe = StableDiffusionImg2ImgPipeline(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand((1, 3, model.height, model.width), device=model.device, dtype=model.dtype)
    generator = torch.Generator(model.device).manual_seed(0)

    def one() -> None:
        pipe(
            prompt="a watercolor painting",
            image=image,
            timesteps=row_timesteps(0.5, steps),
            strength=1.0,  # keeps the whole custom schedule: strength 0.5 is in its first timestep
            guidance_scale=0.0,
            generator=generator,
            output_type="pt",
        )
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    one()
    latencies: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or not latencies:
        began = time.perf_counter()
        one()
        latencies.append(time.perf_counter() - began)
    elapsed = time.perf_counter() - start
    return {
        "frames": len(latencies),
        "frames_per_s": round(len(latencies) / elapsed, 2),
        "latency_ms_p50": round(statistics.median(latencies) * 1000, 3),
    }


def bench_control(
    model: ModelBundle,
    nets: ControlNets | None,
    batch: int,
    steps: int,
    seconds: float,
    frame: np.ndarray,
    graphs: bool,
) -> dict[str, Any]:
    """One batch size with ControlNet off, one kind on every row and two kinds mixed; each streaming run's
    model stage (the UNet and ControlNet calls, control images included) against off."""
    runs = {}
    for label, kinds in CONTROL_RUNS.items():
        rows = bench_engine(
            model, batch, steps, seconds, frame, graphs=graphs, compile_mode="none", control=nets, kinds=kinds
        )
        runs[label] = next(row for row in rows if row["mode"] == "streaming")
    off = runs["off"]
    for row in runs.values():
        row["model_time_vs_off"] = round(row["stage_ms_p50"]["model"] / off["stage_ms_p50"]["model"], 3)
        row["frames_per_s_vs_off"] = round(row["frames_per_s"] / off["frames_per_s"], 3)
    return {"kinds": list(nets.kinds) if nets else [], "batch": batch, "steps": steps, "runs": runs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="a spec, or several separated by commas (one JSON each)")
    parser.add_argument(
        "--steps", default="", help="num_inference_steps values, e.g. 1,2,4; empty = the family's default"
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--resolution", type=int, default=0, help="0 = the model's native size")
    parser.add_argument(
        "--frame-size",
        type=int,
        default=0,
        help="input frames are size x size (the engine converts and resizes them); 0 = the model's size",
    )
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    parser.add_argument(
        "--compile",
        default="none",
        choices=["none", "default", "reduce-overhead", "max-autotune"],
        help="torch.compile mode",
    )
    parser.add_argument("--no-graphs", action="store_true", help="on CUDA, skip the runs with CUDA graphs")
    parser.add_argument(
        "--control", default="", help="ControlNets to measure, as [control] models entries joined by commas, or tiny"
    )
    parser.add_argument(
        "--loras", default="0", help="numbers of different LoRAs the streams wear, e.g. 0,1,4,16 (0: none)"
    )
    parser.add_argument("--lora-rank", type=int, default=16, help="rank of the random LoRAs made for --loras")
    parser.add_argument("--lora-max-rank", type=int, default=64, help="the engine's [lora] max_rank")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    for spec in args.model.split(","):
        _bench_model(spec, args, sys.argv[1:] if argv is None else argv)


def _lora_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row with LoRAs gets `lora_vs_none`: its frames/s over the same configuration's without."""
    plain = {(r["mode"], r["batch"], r["steps"], r["graphs"]): r for r in rows if r["loras"] == 0}
    for row in rows:
        base = plain.get((row["mode"], row["batch"], row["steps"], row["graphs"]))
        if base is not None and base["frames_per_s"]:
            row["lora_vs_none"] = round(row["frames_per_s"] / base["frames_per_s"], 3)


def _bench_model(spec: str, args: argparse.Namespace, argv: list[str]) -> None:
    device = default_device()
    model = load_model(
        spec,
        data_dir=args.data_dir,
        device=device,
        dtype=default_dtype(device, args.dtype),
        resolution=args.resolution or None,
    )
    rng = np.random.default_rng(0)
    height, width = (args.frame_size, args.frame_size) if args.frame_size else (model.height, model.width)
    frame = rng.integers(16, 236, (height * 3 // 2, width), dtype=np.uint8)
    graph_modes = [True, False] if device.type == "cuda" and not args.no_graphs else [False]
    step_counts = [int(n) for n in args.steps.split(",")] if args.steps else [model.family.default_steps]
    baselines = {steps: bench_diffusers(model, steps, args.seconds) for steps in step_counts}
    lora_counts = [int(n) for n in args.loras.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        made = random_loras(model, max(lora_counts), args.lora_rank, Path(folder))
        engine = [
            row
            for steps in step_counts
            for graphs in graph_modes
            for size in args.batch_sizes.split(",")
            for count in lora_counts
            for row in bench_engine(
                model,
                int(size),
                steps,
                args.seconds,
                frame,
                graphs=graphs,
                compile_mode=args.compile,
                loras=tuple(made[:count]),
                lora_max_rank=args.lora_max_rank,
            )
        ]
    for row in engine:
        row["speedup_vs_diffusers"] = round(row["frames_per_s"] / baselines[row["steps"]]["frames_per_s"], 2)
    control = None
    if args.control:
        nets = load_controlnets(args.control.split(","), model, data_dir=args.data_dir)
        batch = max(int(size) for size in args.batch_sizes.split(","))
        control = bench_control(model, nets, batch, step_counts[0], args.seconds, frame, graph_modes[0])
    if lora_counts != [0]:
        _lora_ratios(engine)
    result = {
        "command": " ".join(["python -m bench.engine", *argv]),
        "model": spec,
        "family": model.family.name,
        "resolution": model.width,
        "frame": [width, height],
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(model.dtype).removeprefix("torch."),
        "compile": args.compile,
        "lora_rank": args.lora_rank,
        "lora_max_rank": args.lora_max_rank,
        "threads": torch.get_num_threads(),  # the baseline's; each engine row has its own
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
        "diffusers_baseline": {str(steps): row for steps, row in baselines.items()},
        "engine": engine,
        "control": control,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    save(args.out, result, "engine", spec, device.type)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
