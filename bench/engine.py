"""Engine throughput and latency per batch size, against diffusers' own img2img pipeline per frame.

    python -m bench.engine --model tiny --batch-sizes 1,2,4,8 --seconds 5
    python -m bench.engine --model arch:sd-turbo --batch-sizes 1,2,4,8,16 --seconds 10   # on a GPU

Writes JSON (command line, device, versions, results) under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import AutoPipelineForImage2Image, StableDiffusionPipeline

from pipeline.contract import FrameParams
from pipeline.engine import Engine
from pipeline.models import ModelBundle, default_device, default_dtype, load_model

RESULTS = Path(__file__).resolve().parent / "results"


def bench_engine(
    model: ModelBundle, batch: int, seconds: float, frame: np.ndarray, compile_mode: str = "none"
) -> dict[str, Any]:
    engine = Engine(model, max_batch=batch, max_wait_ms=50.0, compile_mode=compile_mode)
    engine.warmup()
    engine.start()
    latencies: list[float] = []
    frames = 0
    try:
        params = [FrameParams(prompt="a watercolor painting", strength=0.5, seed=i) for i in range(batch)]
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or frames == 0:
            sent = time.perf_counter()
            futures = [engine.submit(f"bench-{i}", frame, params[i]) for i in range(batch)]
            for future in futures:
                future.result()
            latencies.append(time.perf_counter() - sent)
            frames += batch
        elapsed = time.perf_counter() - start
    finally:
        engine.stop()
    return {
        "batch": batch,
        "frames": frames,
        "frames_per_s": round(frames / elapsed, 2),
        "batch_latency_ms_p50": round(statistics.median(latencies) * 1000, 3),
        "batch_latency_ms_p95": round(float(np.percentile(latencies, 95)) * 1000, 3),
        "cpu_threads": engine.cpu_threads,
    }


def bench_diffusers(model: ModelBundle, seconds: float) -> dict[str, Any]:
    """The baseline: diffusers' AutoPipelineForImage2Image called once per frame, one step."""
    text2img = StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=model.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe = AutoPipelineForImage2Image.from_pipe(text2img)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand((1, 3, model.height, model.width), device=model.device, dtype=model.dtype)
    generator = torch.Generator(model.device).manual_seed(0)

    def one() -> None:
        pipe(
            prompt="a watercolor painting",
            image=image,
            num_inference_steps=2,
            strength=0.5,
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--resolution", type=int, default=0, help="0 = the model's native size")
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    parser.add_argument(
        "--compile",
        default="none",
        choices=["none", "default", "reduce-overhead", "max-autotune"],
        help="torch.compile mode",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    device = default_device()
    model = load_model(
        args.model,
        data_dir=args.data_dir,
        device=device,
        dtype=default_dtype(device, args.dtype),
        resolution=args.resolution or None,
    )
    rng = np.random.default_rng(0)
    frame = rng.integers(16, 236, (model.height * 3 // 2, model.width), dtype=np.uint8)
    baseline = bench_diffusers(model, args.seconds)
    engine = [bench_engine(model, int(b), args.seconds, frame, args.compile) for b in args.batch_sizes.split(",")]
    for row in engine:
        row["speedup_vs_diffusers"] = round(row["frames_per_s"] / baseline["frames_per_s"], 2)
    result = {
        "command": " ".join(["python -m bench.engine", *(sys.argv[1:] if argv is None else argv)]),
        "model": args.model,
        "resolution": model.width,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(model.dtype).removeprefix("torch."),
        "compile": args.compile,
        "threads": torch.get_num_threads(),  # the baseline's; each engine row has its own
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
        "diffusers_baseline": baseline,
        "engine": engine,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    slug = args.model.replace(":", "-").replace("/", "-")
    name = f"engine-{slug}-{device.type}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
