"""Memory over a long run of people coming and going, with every per-stream memory on.

    python -m bench.memory --model tiny --frames 10000 --joins 200
    python -m bench.memory --model arch:sd-turbo --frames 10000 --joins 200     # on a GPU

Four streams at a time, each with latent feedback, cached attention and a flicker target; one leaves
and a new one joins at even steps until `joins` have joined, over `frames` frames in all. The host's
resident memory (and CUDA's allocated memory on a GPU) is sampled every tenth of the run: a departed
stream that left anything behind shows as growth. Writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.result_file import save
from pipeline.contract import FrameParams
from pipeline.engine import Engine
from pipeline.models import default_device, default_dtype, load_model

RESULTS = Path(__file__).resolve().parent / "results"
AT_ONCE = 4


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return round(pages * 4096 / 2**20, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--joins", type=int, default=200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    device = default_device()
    model = load_model(args.model, data_dir=args.data_dir, device=device, dtype=default_dtype(device))
    engine = Engine(model, max_batch=AT_ONCE, memory_slots=8)
    engine.start()
    rng = np.random.default_rng(0)
    frame = rng.integers(16, 236, (args.size * 3 // 2, args.size), dtype=np.uint8)
    params = FrameParams(prompt="an oil painting", strength=0.5, feedback=0.4, frames=2, flicker_target=1.0)
    streams = [f"person-{i}" for i in range(AT_ONCE)]
    joined = len(streams)
    rounds = args.frames // AT_ONCE
    every = max(1, rounds // max(1, args.joins - AT_ONCE))  # a leave and a join this often
    samples: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        for index in range(rounds):
            for future in [engine.submit(key, frame, params) for key in streams]:
                future.result(timeout=120)
            if index % every == every - 1 and joined < args.joins:
                engine.forget(streams.pop(0))
                streams.append(f"person-{joined}")
                joined += 1
            if index % max(1, rounds // 10) == 0 or index == rounds - 1:
                cuda = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
                samples.append(
                    {"frames": (index + 1) * AT_ONCE, "joined": joined, "rss_mb": resident_mb(), "cuda_bytes": cuda}
                )
        held = {
            "slots": len(engine.slots._slots),
            "figures": len(engine.flicker._figures),
            "temporal": len(engine.temporal._held),
        }
    finally:
        engine.stop()
    result = {
        "command": " ".join(["python -m bench.memory", *(sys.argv[1:] if argv is None else argv)]),
        "model": args.model,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "frames": rounds * AT_ONCE,
        "joined": joined,
        "seconds": round(time.perf_counter() - started, 1),
        "samples": samples,
        "rss_growth_mb_after_first_tenth": round(float(samples[-1]["rss_mb"]) - float(samples[1]["rss_mb"]), 1),
        "held_for_the_streams_still_there": held,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = save(args.out, result, "memory", args.model, device.type)
    print(json.dumps({k: result[k] for k in ("frames", "joined", "rss_growth_mb_after_first_tenth")}), path)


if __name__ == "__main__":
    main()
