"""StreamDiffusion's "stream batch" against this engine's schedule, for n denoising steps and B streams.

    python -m bench.stream_batch --model tiny-sd15 --steps 2,4 --batch 1,4 --seconds 3
    python -m bench.stream_batch --model arch:sd15 --resolution 128 --steps 2,4 --batch 1,4   # CPU
    python -m bench.stream_batch --model arch:sd15,arch:sdxl-turbo --steps 2,4 --batch 1,4,8  # on a GPU

Each tick every stream sends one frame. "plain" is the engine's transform (`OneStepImg2Img`): the B new
frames go through all n steps at once, n UNet calls of B rows, and come out in the same tick.
"stream" is StreamDiffusion's: each stream keeps n frames in flight, one at each of its n timesteps,
and a tick is one UNet call of B*n rows (the new frames at the first timestep, the older ones a step
further each); the frames at the last timestep come out, so a frame comes out n-1 ticks after it
went in. Both encode and decode B frames a tick, with the same timesteps, noise and LCM steps (the
transform's own pieces), so a frame's picture is the same either way (`max_abs_diff` checks it).
Reported per (n, B): tick time, frames/s, latency in frames behind and in ms (a frame's input to its
output), and the stream schedule's frames/s over plain's. The real model bundle and UNet; runs from the
source tree with any Python that has torch and diffusers. Writes JSON (command line, device, versions)
under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import torch

from bench.result_file import save
from pipeline.models import ModelBundle, default_device, default_dtype, load_model
from pipeline.onestep import OneStepImg2Img, row_timesteps
from pipeline.prompts import PromptEmbeddings

RESULTS = Path(__file__).resolve().parent / "results"
STRENGTH = 0.5
PROMPT = "a watercolor painting"
# The stream schedule "wins" past this ratio of frames/s to plain's (below it, timing noise could say either).
WINS_ABOVE = 1.05


class Conditioning:
    """B streams' fixed inputs: the prompt's embeddings (and SDXL's added conditioning), noise per step."""

    def __init__(self, model: ModelBundle, transform: OneStepImg2Img, streams: int, steps: int) -> None:
        prompts = PromptEmbeddings(model)
        self.embeds = prompts.get(PROMPT).unsqueeze(0).expand(streams, -1, -1)
        self.pooled = prompts.pooled(PROMPT).unsqueeze(0).expand(streams, -1) if model.family.pooled else None
        self.time_ids = transform.time_ids
        self.timesteps = row_timesteps(STRENGTH, steps)
        latent = model.height // model.vae_scale_factor
        generator = torch.Generator().manual_seed(0)
        shape = (streams, steps, model.latent_channels, latent, latent)
        self.noise = torch.randn(shape, generator=generator).to(model.device)

    def added(self, repeats: int) -> dict[str, torch.Tensor] | None:
        if self.pooled is None:
            return None
        pooled = self.pooled.repeat(repeats, 1)
        return {"text_embeds": pooled, "time_ids": self.time_ids.expand(pooled.shape[0], -1)}


def plain_tick(transform: OneStepImg2Img, cond: Conditioning) -> Callable[[torch.Tensor], torch.Tensor]:
    """The engine's transform: B frames, n UNet calls of B rows, out in the same tick."""
    streams = cond.embeds.shape[0]
    table = torch.tensor([cond.timesteps] * streams, device=transform.device)

    def tick(images: torch.Tensor) -> torch.Tensor:
        return transform(
            images,
            cond.embeds,
            table,
            cond.noise,
            pooled_embeds=cond.pooled,
            num_steps=len(cond.timesteps),
        )

    return tick


class StreamBatch:
    """StreamDiffusion's schedule: per stream, n frames in flight at the n timesteps, one UNet call of B*n rows.

    Rows are step-major: rows [i*B, (i+1)*B) are the streams' frames at timestep i. The buffer starts as
    zeros (as StreamDiffusion's does), so the first n-1 ticks' outputs are not frames.
    """

    def __init__(self, transform: OneStepImg2Img, cond: Conditioning) -> None:
        self.transform = transform
        self.cond = cond
        self.steps = len(cond.timesteps)
        self.streams = cond.embeds.shape[0]
        t = torch.tensor(cond.timesteps, device=transform.device)
        self.t = t.repeat_interleave(self.streams)  # (B*n,)
        self.alpha = transform.alphas_cumprod[self.t].view(-1, 1, 1, 1)
        self.c_out = transform.c_out[self.t].view(-1, 1, 1, 1)
        self.c_skip = transform.c_skip[self.t].view(-1, 1, 1, 1)
        # Each row's noise at its own step, and the next step's alpha and noise for the rows that go on.
        self.noise = cond.noise.transpose(0, 1).reshape(-1, *cond.noise.shape[2:])
        self.embeds = cond.embeds.repeat(self.steps, 1, 1)
        self.added = cond.added(self.steps)
        latent = cond.noise.shape[2:]
        self.in_flight = torch.zeros((self.streams * (self.steps - 1), *latent), device=transform.device)

    @torch.inference_mode()
    def tick(self, images: torch.Tensor) -> torch.Tensor:
        transform, streams = self.transform, self.streams
        latents = transform._encode(images.to(transform.device, transform.dtype)).float()
        alpha_first = self.alpha[:streams]
        fresh = alpha_first.sqrt() * latents + (1.0 - alpha_first).sqrt() * self.noise[:streams]
        x = torch.cat((fresh, self.in_flight))
        model_output = transform._predict(x, self.t, self.embeds, self.added, None)
        x0 = transform._x0(x, model_output, self.alpha)
        denoised = self.c_out * x0 + self.c_skip * x
        # The rows before the last timestep back up to their next one with their stream's next noise.
        alpha_next = self.alpha[streams:]
        self.in_flight = alpha_next.sqrt() * denoised[:-streams] + (1.0 - alpha_next).sqrt() * self.noise[streams:]
        last = denoised[-streams:].to(transform.dtype) / transform.scaling_factor
        decoded = transform.vae.decode(last, return_dict=False)[0]
        return decoded.float().clamp(-1.0, 1.0)


def _timed(
    ticks: list[Callable[[torch.Tensor], torch.Tensor]], frames: list[torch.Tensor], seconds: float
) -> list[list[float]]:
    """Seconds per tick of each schedule, taking turns tick by tick for `seconds` (3 turns at least), so a
    load that comes and goes on the machine weighs on both alike."""
    cuda = frames[0].device.type == "cuda"
    times: list[list[float]] = [[] for _ in ticks]
    start = time.perf_counter()
    turn = 0
    while time.perf_counter() - start < seconds or turn < 3:
        for tick, own in zip(ticks, times, strict=True):
            began = time.perf_counter()
            tick(frames[turn % len(frames)])
            if cuda:
                torch.cuda.synchronize()
            own.append(time.perf_counter() - began)
        turn += 1
    return times


@torch.inference_mode()
def bench_pair(model: ModelBundle, steps: int, streams: int, seconds: float) -> dict[str, Any]:
    transform = OneStepImg2Img(model)
    cond = Conditioning(model, transform, streams, steps)
    generator = torch.Generator().manual_seed(1)
    shape = (streams, 3, model.height, model.width)
    frames = [(torch.rand(shape, generator=generator) * 2 - 1).to(model.device) for _ in range(steps + 1)]
    plain = plain_tick(transform, cond)
    stream = StreamBatch(transform, cond)
    # Warm-up, and the check: the stream schedule's first real output is plain's picture of the first frame.
    expected = plain(frames[0])
    outputs = [stream.tick(frame) for frame in frames[:steps]]
    max_abs_diff = float((outputs[-1] - expected).abs().max())

    plain_times, stream_times = _timed([plain, stream.tick], frames, seconds)
    plain_s = statistics.median(plain_times)
    stream_s = statistics.median(stream_times)
    return {
        "steps": steps,
        "streams": streams,
        "plain": _figures(plain_s, streams, len(plain_times), behind=0, unet_calls=steps, unet_rows=streams),
        "stream": _figures(
            stream_s, streams, len(stream_times), behind=steps - 1, unet_calls=1, unet_rows=streams * steps
        ),
        "stream_over_plain_frames_per_s": round(plain_s / stream_s, 3),
        "max_abs_diff": round(max_abs_diff, 6),
    }


def _figures(
    tick_s: float, streams: int, ticks: int, *, behind: int, unet_calls: int, unet_rows: int
) -> dict[str, Any]:
    return {
        "ticks": ticks,
        "unet_calls_per_tick": unet_calls,
        "unet_rows_per_call": unet_rows,
        "tick_ms_p50": round(tick_s * 1000, 3),
        "frames_per_s": round(streams / tick_s, 2),
        "frames_behind": behind,
        # A frame goes in at the start of its tick and comes out at the end of the tick `behind` later.
        "latency_ms": round((behind + 1) * tick_s * 1000, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_batch", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny-sd15", help="a spec, or several separated by commas (one JSON each)")
    parser.add_argument("--steps", default="2,4", help="denoising steps per frame, e.g. 2,4")
    parser.add_argument("--batch", default="1,4", help="streams, e.g. 1,4,8")
    parser.add_argument("--resolution", type=int, default=0, help="0 = the model's native size")
    parser.add_argument("--seconds", type=float, default=3.0, help="per (steps, streams), both schedules in turn")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    for spec in args.model.split(","):
        _bench_model(spec, args, sys.argv[1:] if argv is None else argv)


def _bench_model(spec: str, args: argparse.Namespace, argv: list[str]) -> None:
    device = default_device()
    model = load_model(
        spec,
        data_dir=args.data_dir,
        device=device,
        dtype=default_dtype(device, args.dtype),
        resolution=args.resolution or None,
    )
    load_before = os.getloadavg()[0]
    rows = [
        bench_pair(model, int(steps), int(streams), args.seconds)
        for steps in args.steps.split(",")
        for streams in args.batch.split(",")
    ]
    result = {
        "command": " ".join(["python -m bench.stream_batch", *argv]),
        "model": spec,
        "family": model.family.name,
        "resolution": model.width,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(model.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        # Anything else running skews CPU figures: the machine's 1-minute load average around the runs.
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
        "results": rows,
        # "Keep it only if it wins": frames/s clearly over plain's somewhere (its latency is always n-1 frames more).
        "stream_batch_wins": any(row["stream_over_plain_frames_per_s"] > WINS_ABOVE for row in rows),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    save(args.out, result, "stream-batch", spec, device.type)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
