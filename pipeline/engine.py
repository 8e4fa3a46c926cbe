"""The batching engine: one worker thread owns the model; callers get futures.

Latest frame wins: a key (a stream) has at most one frame waiting, and a newer one replaces it
(the old future fails with `FrameReplaced`). The worker takes live frames first, then job frames,
up to `max_batch`, waiting at most `max_wait_ms` for frames of other recently active streams, and
pads the batch to a fixed bucket size so compiled graphs are reused.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.colour import rgb_to_yuv420p, yuv420p_to_rgb
from pipeline.contract import BatchReport, EngineClosed, FrameParams, FrameReplaced, Priority
from pipeline.models import ModelBundle
from pipeline.onestep import OneStepImg2Img, strength_to_timestep
from pipeline.prompts import PromptEmbeddings

logger = logging.getLogger(__name__)

# A stream that submitted within this window is expected to submit again soon: worth waiting for.
ACTIVE_WINDOW_S = 1.0


@dataclass
class _Request:
    key: str
    frame: np.ndarray
    params: FrameParams
    priority: Priority
    future: Future[np.ndarray]
    arrived: float = field(default_factory=time.perf_counter)

    @cached_property
    def thumbnail(self) -> np.ndarray:
        """Every 8th luma pixel, for the similarity filter (made once per frame)."""
        height = self.frame.shape[0] * 2 // 3
        return self.frame[:height:8, ::8].astype(np.float32)


@dataclass
class _LastFrame:
    thumbnail: np.ndarray
    params: FrameParams
    output: np.ndarray


def buckets_for(max_batch: int) -> list[int]:
    sizes = [1]
    while sizes[-1] < max_batch:
        sizes.append(min(sizes[-1] * 2, max_batch))
    return sizes


def auto_cpu_threads() -> int:
    """All cores but one: with torch on every core the WebRTC codecs starve and frames queue up in
    aiortc's decoders (4 peers on 2 cores: round trip 0.2 s with one model thread, 2 s and growing with two)."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


class Engine:
    def __init__(
        self,
        model: ModelBundle,
        *,
        max_batch: int = 8,
        max_wait_ms: float = 4.0,
        similarity_threshold: float = 0.0,
        prompt_cache_size: int = 64,
        compile_mode: str = "none",
        cpu_threads: int = 0,
        on_batch: Callable[[BatchReport], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.similarity_threshold = similarity_threshold
        self.buckets = buckets_for(max_batch)
        self.transform = OneStepImg2Img(model)
        if compile_mode != "none":
            self.transform.unet = torch.compile(model.unet, mode=compile_mode, fullgraph=True)
            self.transform.vae.decoder = torch.compile(model.vae.decoder, mode=compile_mode)
        self.prompts = PromptEmbeddings(model, prompt_cache_size)
        self._set_cpu_threads = cpu_threads
        self.cpu_threads = 0  # torch CPU threads the model runs with, known once the worker runs
        self._on_batch = on_batch
        self._pending: OrderedDict[str, _Request] = OrderedDict()
        self._active: dict[str, float] = {}
        self._last: dict[str, _LastFrame] = {}
        self._noise: OrderedDict[tuple[int, int, int], torch.Tensor] = OrderedDict()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.frames_done = 0
        self.frames_replaced = 0
        self.frames_skipped = 0
        self.batches = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("engine already started")
        self._thread = threading.Thread(target=self._run, name="stylize-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            pending = list(self._pending.values())
            self._pending.clear()
            self._cond.notify_all()
        for request in pending:
            _fail(request.future, EngineClosed("engine stopped"))
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def warmup(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Run every bucket once at the model's resolution (compiles graphs where enabled).

        Warm-up batches are not served work: they are not reported to `on_batch`.
        """
        frame = np.full((self.model.height * 3 // 2, self.model.width), 128, dtype=np.uint8)
        params = FrameParams(prompt="", strength=0.5)
        for index, bucket in enumerate(self.buckets, start=1):
            requests = [_Request(f"warmup-{i}", frame, params, Priority.JOB, Future()) for i in range(bucket)]
            self._process(requests, report=False)
            if progress is not None:
                progress(index, len(self.buckets))

    # -- submitting --------------------------------------------------------------------------

    def submit(
        self, key: str, frame: np.ndarray, params: FrameParams, priority: Priority = Priority.LIVE
    ) -> Future[np.ndarray]:
        """Queue a yuv420p frame ((H*3/2, W) uint8, W even); resolves to the stylized frame."""
        if frame.dtype != np.uint8 or frame.ndim != 2 or frame.shape[0] % 3 or frame.shape[1] % 2:
            raise ValueError(f"expected a (H*3/2, W) uint8 yuv420p frame, got {frame.dtype} {frame.shape}")
        future: Future[np.ndarray] = Future()
        request = _Request(key, frame, params, priority, future)
        with self._cond:
            if self._stopped:
                raise EngineClosed("engine stopped")
            old = self._pending.pop(key, None)
            self._pending[key] = request
            if priority is Priority.LIVE:
                self._active[key] = request.arrived
            if old is not None:
                self.frames_replaced += 1
            self._cond.notify_all()
        if old is not None:
            _fail(old.future, FrameReplaced(f"frame of {key!r} replaced by a newer one"))
        return future

    def forget(self, key: str) -> None:
        """A stream left: drop its waiting frame and its state."""
        with self._cond:
            request = self._pending.pop(key, None)
            self._active.pop(key, None)
            self._last.pop(key, None)
        if request is not None:
            _fail(request.future, EngineClosed(f"stream {key!r} closed"))

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    # -- the worker thread -------------------------------------------------------------------

    def _run(self) -> None:
        # torch's CPU thread count belongs to the calling thread, so it is set here, where the model runs.
        if self._set_cpu_threads:
            torch.set_num_threads(self._set_cpu_threads)
        elif self.model.device.type == "cpu":
            torch.set_num_threads(auto_cpu_threads())
        self.cpu_threads = torch.get_num_threads()
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                self._process(batch)
            except Exception as e:
                logger.exception("batch of %d failed", len(batch))
                for request in batch:
                    _fail(request.future, e)

    def _take_batch(self) -> list[_Request] | None:
        with self._cond:
            while not self._pending and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
            deadline = time.perf_counter() + self.max_wait_s
            while not self._stopped:
                live_waiting = sum(1 for r in self._pending.values() if r.priority is Priority.LIVE)
                if live_waiting >= min(self._expected_live(), self.max_batch):
                    break
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._stopped:
                return None
            ordered = sorted(self._pending.values(), key=lambda r: (r.priority, r.arrived))
            batch = ordered[: self.max_batch]
            for request in batch:
                del self._pending[request.key]
            return batch

    def _expected_live(self) -> int:
        horizon = time.perf_counter() - ACTIVE_WINDOW_S
        return sum(1 for seen in self._active.values() if seen >= horizon)

    def _process(self, batch: list[_Request], *, report: bool = True) -> None:
        stages: dict[str, float] = {}
        done: list[tuple[_Request, np.ndarray]] = []
        work: list[_Request] = []
        skipped = 0
        for request in batch:
            if request.params.strength == 0.0:
                done.append((request, request.frame))
                continue
            reused = self._similar_output(request)
            if reused is not None:
                skipped += 1
                done.append((request, reused))
                continue
            work.append(request)

        if work:
            started = time.perf_counter()
            images, sizes = self._preprocess(work)
            bucket = next(b for b in self.buckets if b >= len(work))
            padding = bucket - len(work)
            embeds, negatives, timesteps, guidance, noise = self._conditioning(work, padding)
            if padding:
                images = torch.cat((images, images[-1:].expand(padding, -1, -1, -1)))
            stages["preprocess"] = self._lap(started)

            started = time.perf_counter()
            stylized = self.transform(images, embeds, timesteps, noise, negatives, guidance)
            stages["model"] = self._lap(started)

            started = time.perf_counter()
            for row, request in enumerate(work):
                output = self._postprocess(stylized[row], sizes[row])
                done.append((request, output))
                if self.similarity_threshold > 0:
                    self._last[request.key] = _LastFrame(request.thumbnail, request.params, output)
            stages["postprocess"] = self._lap(started)

        for request, output in done:
            if not request.future.done():
                request.future.set_result(output)
        self.frames_done += len(done)
        self.frames_skipped += skipped
        self.batches += 1
        if report and self._on_batch is not None:
            self._on_batch(BatchReport(len(batch), skipped, stages))

    def _preprocess(self, work: list[_Request]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        device = self.model.device
        rows = []
        sizes = []
        for request in work:
            frame = torch.from_numpy(request.frame).to(device, non_blocking=True)
            rgb = yuv420p_to_rgb(frame)
            sizes.append((rgb.shape[1], rgb.shape[2]))
            rows.append(_resize(rgb, (self.model.height, self.model.width)))
        images = torch.stack(rows).to(self.model.dtype).contiguous(memory_format=torch.channels_last)
        return images, sizes

    def _conditioning(
        self, work: list[_Request], padding: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        num_train = self.transform.num_train_timesteps
        rows = work + [work[-1]] * padding
        embeds = torch.stack([self.prompts.blended(r.params.prompt, r.params.prompt_b, r.params.blend) for r in rows])
        negatives = torch.stack([self.prompts.get(r.params.negative_prompt) for r in rows])
        timesteps = torch.tensor([strength_to_timestep(r.params.strength, num_train) for r in rows])
        guidance = torch.tensor([r.params.guidance_scale for r in rows], dtype=torch.float32)
        noise = torch.cat([self._noise_for(r.params.seed) for r in rows])
        return embeds, negatives, timesteps, guidance, noise

    def _noise_for(self, seed: int) -> torch.Tensor:
        """Fixed noise per seed (what keeps video from flickering), made on the CPU like diffusers does."""
        factor = self.model.vae_scale_factor
        key = (seed, self.model.height // factor, self.model.width // factor)
        noise = self._noise.get(key)
        if noise is None:
            generator = torch.Generator().manual_seed(seed)
            shape = (1, self.model.latent_channels, key[1], key[2])
            noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.model.device)
            self._noise[key] = noise
            if len(self._noise) > 256:
                self._noise.popitem(last=False)
        else:
            self._noise.move_to_end(key)
        return noise

    def _postprocess(self, image: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        rgb = _resize(image.float(), size)
        return rgb_to_yuv420p(rgb).cpu().numpy()

    def _similar_output(self, request: _Request) -> np.ndarray | None:
        if self.similarity_threshold <= 0:
            return None
        last = self._last.get(request.key)
        if last is None or last.params != request.params or last.output.shape != request.frame.shape:
            return None
        difference = np.abs(request.thumbnail - last.thumbnail).mean() / 255.0
        return last.output if difference < self.similarity_threshold else None

    def _lap(self, started: float) -> float:
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)
        return time.perf_counter() - started


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if (image.shape[-2], image.shape[-1]) == size:
        return image
    resized = F.interpolate(image.unsqueeze(0), size=size, mode="bilinear", antialias=True, align_corners=False)
    return resized.squeeze(0).clamp(0.0, 1.0)


def _fail(future: Future[np.ndarray], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
