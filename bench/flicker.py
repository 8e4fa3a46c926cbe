"""Flicker against cost: each temporal technique on one synthetic clip, its flicker figure and frames/s.

    python -m bench.flicker --model tiny --size 256 --frames 120 --streams 4
    python -m bench.flicker --model arch:sd-turbo --frames 300 --streams 8      # on a GPU

The clip is made here: a still textured scene with camera noise (each frame's own, sigma 3 levels)
and a bright disc crossing it, so the figure sees both a still background that may boil and motion
the picture must follow. Every stream sends the clip from its own offset, one frame per round, all
rows in one batch (the engine's newest-frame batching); each technique runs on a fresh engine.
Reported per technique: the streams' median flicker figure over the second half of the clip (the
figure the server reports, `pipeline.flicker`, over model frames), the same figure worked out here
from every frame a viewer gets (`viewer_flicker`: frames the similarity filter skips repeat the last
output, which the server's figure does not see), their ratios to "off", and frames/s over the whole
clip (model and batching; the figure's own cost is inside every row). Runs from the source tree with any
Python that has torch and diffusers. Writes JSON (command line, device, versions) under bench/results/.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch

from bench.result_file import save
from pipeline.contract import FrameParams
from pipeline.engine import Engine
from pipeline.flicker import ALPHA, FLOOR, THUMBNAIL
from pipeline.models import ModelBundle, default_device, default_dtype, load_model

RESULTS = Path(__file__).resolve().parent / "results"
NOISE_LEVELS = 3.0


@dataclass(frozen=True)
class Technique:
    name: str
    feedback: float = 0.0
    target: float | None = None
    similarity: float = 0.0  # the engine's similarity threshold (stochastic skips)
    frames: int = 0  # cached attention: past frames each row's self-attention also sees


TECHNIQUES = [
    Technique("off"),
    Technique("feedback 0.3", feedback=0.3),
    Technique("feedback 0.6", feedback=0.6),
    Technique("feedback 0.9", feedback=0.9),
    Technique("cached attention 2 frames", frames=2),
    Technique("cached attention 4 frames", frames=4),
    Technique("feedback 0.3 + cached attention 2 frames", feedback=0.3, frames=2),
    Technique("similarity filter 0.02", similarity=0.02),
    Technique("feedback 0.6 + similarity filter 0.02", feedback=0.6, similarity=0.02),
    Technique("target: half of off's figure", target=-0.5),  # resolved against "off" when run
]


def make_clip(size: int, frames: int, seed: int = 0) -> list[np.ndarray]:
    """yuv420p frames ((size * 3/2, size) uint8): a still scene, camera noise, a moving disc."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(40, 200, (size // 16, size // 16))
    scene = np.kron(coarse, np.ones((16, 16)))  # a blocky texture: edges that stay put
    yy, xx = np.mgrid[0:size, 0:size]
    clip = []
    for index in range(frames):
        luma = scene.copy()
        x = size * 0.15 + (size * 0.7) * index / max(1, frames - 1)
        luma[(xx - x) ** 2 + (yy - size / 2) ** 2 < (size / 8) ** 2] = 235.0
        luma += rng.normal(0.0, NOISE_LEVELS, luma.shape)
        frame = np.full((size * 3 // 2, size), 128, dtype=np.uint8)
        frame[:size] = np.clip(luma, 16, 235).astype(np.uint8)
        clip.append(frame)
    return clip


def _thumbnail(frame: np.ndarray) -> np.ndarray:
    """A yuv420p frame's THUMBNAIL x THUMBNAIL area-averaged luma in [0, 1] (as the device reads RGB)."""
    height, width = frame.shape[0] * 2 // 3, frame.shape[1]
    luma = (frame[:height].astype(np.float32) - 16.0) / 219.0
    rows, cols = height // THUMBNAIL, width // THUMBNAIL
    return luma[: rows * THUMBNAIL, : cols * THUMBNAIL].reshape(THUMBNAIL, rows, THUMBNAIL, cols).mean(axis=(1, 3))


def viewer_flicker(inputs: list[np.ndarray], outputs: list[np.ndarray]) -> list[float]:
    """The server's figure over every delivered frame: EMA(d_out) / max(EMA(d_in), FLOOR) after each."""
    figures: list[float] = []
    d_in = d_out = None
    pairs = [(_thumbnail(a), _thumbnail(b)) for a, b in zip(inputs, outputs, strict=True)]
    for (before_in, before_out), (now_in, now_out) in itertools.pairwise(pairs):
        change_in = float(np.abs(now_in - before_in).mean())
        change_out = float(np.abs(now_out - before_out).mean())
        d_in = change_in if d_in is None else d_in + ALPHA * (change_in - d_in)
        d_out = change_out if d_out is None else d_out + ALPHA * (change_out - d_out)
        figures.append(d_out / max(d_in, FLOOR))
    return figures


def run(model: ModelBundle, technique: Technique, clip: list[np.ndarray], streams: int) -> dict[str, Any]:
    engine = Engine(model, max_batch=streams, max_wait_ms=1000.0, similarity_threshold=technique.similarity)
    engine.start()
    keys = [f"bench-{i}" for i in range(streams)]
    offsets = [i * len(clip) // streams for i in range(streams)]
    figures: list[list[float]] = [[] for _ in keys]
    delivered: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in keys]
    try:
        started = time.perf_counter()
        for index in range(len(clip)):
            params = FrameParams(
                prompt="an oil painting",
                strength=0.6,
                seed=7,
                feedback=technique.feedback,
                flicker_target=technique.target,
                frames=technique.frames,
            )
            futures = [
                engine.submit(key, clip[(index + offset) % len(clip)], params)
                for key, offset in zip(keys, offsets, strict=True)
            ]
            for stream, future in enumerate(futures):
                delivered[stream].append((clip[(index + offsets[stream]) % len(clip)], future.result(timeout=120)))
            if index >= len(clip) // 2:
                for stream, key in enumerate(keys):
                    figure = engine.flicker.of(key)
                    if figure is not None:
                        figures[stream].append(figure)
        elapsed = time.perf_counter() - started
        states = [engine.temporal.describe(key) for key in keys]
    finally:
        engine.stop()
    per_stream = [statistics.median(values) for values in figures if values]
    half = len(clip) // 2
    viewer = [
        statistics.median(viewer_flicker([i for i, _ in frames], [o for _, o in frames])[half - 1 :])
        for frames in delivered
    ]
    return {
        "technique": technique.name,
        "feedback": technique.feedback,
        "target": technique.target,
        "similarity_threshold": technique.similarity,
        "frames": technique.frames,
        "flicker_median": round(statistics.median(per_stream), 3),
        "flicker_per_stream": [round(value, 3) for value in per_stream],
        "viewer_flicker_median": round(statistics.median(viewer), 3),
        "frames_per_s": round(len(clip) * streams / elapsed, 2),
        "frames_skipped": engine.frames_skipped,
        "temporal_at_end": states,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.flicker", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--size", type=int, default=256, help="the clip's frames are size x size")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    device = default_device()
    model = load_model(args.model, data_dir=args.data_dir, device=device, dtype=default_dtype(device, args.dtype))
    clip = make_clip(args.size, args.frames)
    rows: list[dict[str, Any]] = []
    for technique in TECHNIQUES:
        if technique.target is not None and technique.target < 0:
            off = rows[0]["flicker_median"]
            technique = Technique(f"target {off * -technique.target:.2f} (half of off)", target=off * -technique.target)
        rows.append(run(model, technique, clip, args.streams))
        row = rows[-1]
        figures = f"flicker {row['flicker_median']:6.2f}, viewer {row['viewer_flicker_median']:6.2f}"
        print(f"{row['technique']:>40}: {figures}, {row['frames_per_s']:7.1f} frames/s")
    for row in rows:
        row["flicker_vs_off"] = round(row["flicker_median"] / rows[0]["flicker_median"], 3)
        row["viewer_flicker_vs_off"] = round(row["viewer_flicker_median"] / rows[0]["viewer_flicker_median"], 3)
        row["speed_vs_off"] = round(row["frames_per_s"] / rows[0]["frames_per_s"], 3)
    result = {
        "command": " ".join(["python -m bench.flicker", *(sys.argv[1:] if argv is None else argv)]),
        "model": args.model,
        "resolution": model.width,
        "clip": {"size": args.size, "frames": args.frames, "noise_levels": NOISE_LEVELS},
        "streams": args.streams,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(model.dtype).removeprefix("torch."),
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
        "techniques": rows,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(save(args.out, result, "flicker", args.model, device.type))


if __name__ == "__main__":
    main()
