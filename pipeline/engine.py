"""The batching engine: one worker thread owns the model; callers get futures.

Latest frame wins: a key (a stream) has at most one frame waiting, and a newer one replaces it
(the old future fails with `FrameReplaced`). The worker takes live frames first, then job frames,
up to `max_batch`, and pads the batch to a fixed bucket size so compiled and captured graphs are
reused.

Batches are pipelined. The worker launches batch k+1 (host staging, one copy up, colour in) while
the device still runs batch k, then waits for batch k's one copy back and hands its rows out. On
CUDA the copies run on streams of their own, ordered by events, and each bucket's transform is one
CUDA graph; on the CPU every op has finished by the time the next line runs, so the same code runs
in order. When no other frame is waiting the in-flight batch is finished at once: a lone stream
never waits for a batch to fill.

A batch that raises is run again row by row, so only a bad row's future fails; running out of
device memory shrinks `max_batch` for the rest of the run.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from itertools import groupby

import numpy as np
import torch

from pipeline.colour import Yuv420pConverter
from pipeline.contract import BatchReport, EngineClosed, FrameParams, FrameReplaced, Priority
from pipeline.models import ModelBundle
from pipeline.onestep import OneStepImg2Img, strength_to_timestep
from pipeline.prompts import PromptEmbeddings

logger = logging.getLogger(__name__)

# A stream that submitted within this window is expected to submit again soon: worth waiting for.
ACTIVE_WINDOW_S = 1.0
# Batches launched and not yet handed out: one on the device, one queued behind it. More would only
# add latency, since the queued one already keeps the device busy while the older one is handed out.
PIPELINE_DEPTH = 2
# Eager runs of a bucket before its capture, as torch's CUDA graph docs ask (lazy initialisation,
# cuDNN autotuning, torch.compile's own compilation all happen outside the graph).
GRAPH_WARMUP_RUNS = 2
# torch.compile modes that record CUDA graphs of their own; the engine's graphs stand aside for them.
COMPILE_MODES_WITH_GRAPHS = ("reduce-overhead", "max-autotune")
# Bytes in front of the frames in the staging buffer: each row's timestep (int64) and guidance
# scale (float32) travel in the same copy as the pixels.
HEADER_BYTES_PER_ROW = 8 + 4


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


class _Mark:
    """A point on the device's timeline: a CUDA event, read only after the batch's one sync, or on
    the CPU, where every op has finished when the next line runs, the clock."""

    def __init__(self, cuda: bool) -> None:
        self._event = torch.cuda.Event(enable_timing=True) if cuda else None
        self._time = 0.0

    def record(self, stream: torch.cuda.Stream | None = None) -> _Mark:
        if self._event is None:
            self._time = time.perf_counter()
        else:
            self._event.record(stream)
        return self

    def reached(self) -> bool:
        return self._event is None or self._event.query()

    def wait(self) -> None:
        if self._event is not None:
            self._event.synchronize()

    def hold(self, stream: torch.cuda.Stream) -> None:
        """Work queued on `stream` from now on starts only once the device has passed this mark."""
        if self._event is not None:
            stream.wait_event(self._event)

    def seconds_to(self, later: _Mark) -> float:
        if self._event is None or later._event is None:
            return later._time - self._time
        return self._event.elapsed_time(later._event) / 1000.0


class _Bucket:
    """The static inputs of one batch size, written in place by every batch of that size, and the
    transform captured over them (one graph without guidance, one with: guidance doubles the batch)."""

    def __init__(self, size: int, model: ModelBundle, sequence: int, embedding: int) -> None:
        device, dtype = model.device, model.dtype
        factor = model.vae_scale_factor
        self.size = size
        self.images = torch.empty(
            (size, 3, model.height, model.width), device=device, dtype=dtype, memory_format=torch.channels_last
        )
        self.embeds = torch.empty((size, sequence, embedding), device=device, dtype=dtype)
        self.negatives = torch.empty((size, sequence, embedding), device=device, dtype=dtype)
        self.timesteps = torch.zeros(size, device=device, dtype=torch.int64)
        self.guidance = torch.zeros(size, device=device, dtype=torch.float32)
        latent = (model.latent_channels, model.height // factor, model.width // factor)
        self.noise = torch.zeros((size, *latent), device=device, dtype=torch.float32)
        self.graphs: dict[bool, _CapturedTransform] = {}

    def arguments(self, guided: bool) -> tuple[torch.Tensor, ...]:
        if guided:
            return self.images, self.embeds, self.timesteps, self.noise, self.negatives, self.guidance
        return self.images, self.embeds, self.timesteps, self.noise


class _CapturedTransform:
    """The whole transform (encode, noise, UNet, x0, decode) recorded once as a CUDA graph over a
    bucket's static inputs; a replay reads them and writes `output`. Record it on the serving
    thread: a graph belongs to the thread that records it."""

    def __init__(self, transform: Callable[..., torch.Tensor], arguments: tuple[torch.Tensor, ...]) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP_RUNS):
                transform(*arguments)
        torch.cuda.current_stream().wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        # A private memory pool per graph, so a graph dropped after an out-of-memory gives its memory
        # back; "thread_local" lets the server's other threads ask CUDA about memory meanwhile.
        with torch.cuda.graph(self._graph, capture_error_mode="thread_local"):
            self.output = transform(*arguments)

    def __call__(self) -> torch.Tensor:
        self._graph.replay()
        return self.output


@dataclass
class _Flight:
    """A launched batch: answers known at launch, and where the model's rows land once copied back."""

    requests: list[_Request]
    answers: list[np.ndarray | None]  # None where the model's output goes
    skipped: int
    rows: list[int] = field(default_factory=list)  # requests the model runs, in the order of the copy back
    host: torch.Tensor | None = None  # every model row's yuv420p, filled by the one copy back
    marks: list[_Mark] = field(default_factory=list)  # start, conditioned, modelled, converted, landed
    idle_from: _Mark | None = None  # where the device's previous batch ended

    def landed(self) -> bool:
        return not self.marks or self.marks[-1].reached()

    def report(self) -> BatchReport:
        if not self.marks:
            return BatchReport(len(self.requests), self.skipped, {})
        start, conditioned, modelled, converted, landed = self.marks
        stages = {
            "preprocess": start.seconds_to(conditioned),
            "model": conditioned.seconds_to(modelled),
            "postprocess": modelled.seconds_to(landed),
        }
        idle = self.idle_from.seconds_to(start) if self.idle_from is not None else 0.0
        return BatchReport(
            len(self.requests), self.skipped, stages, busy_s=start.seconds_to(converted), idle_s=max(0.0, idle)
        )


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
        cuda_graphs: bool = True,
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
        self._cuda = model.device.type == "cuda"
        self.cuda_graphs = cuda_graphs and self._cuda and compile_mode not in COMPILE_MODES_WITH_GRAPHS
        if cuda_graphs and self._cuda and not self.cuda_graphs:
            logger.info("torch.compile mode %r records its own CUDA graphs; the engine's stand aside", compile_mode)
        self.prompts = PromptEmbeddings(model, prompt_cache_size)
        self._num_train_timesteps = self.transform.num_train_timesteps
        self._colour = Yuv420pConverter(model.device, (-1.0, 1.0))
        self._set_cpu_threads = cpu_threads
        self.cpu_threads = 0  # torch CPU threads the model runs with, known once the worker runs
        self._on_batch = on_batch
        self._pending: OrderedDict[str, _Request] = OrderedDict()
        self._active: dict[str, float] = {}
        self._known: set[str] = set()  # keys not forgotten: only these may leave a `_last` behind
        self._last: dict[str, _LastFrame] = {}
        self._noise: OrderedDict[tuple[int, int, int], torch.Tensor] = OrderedDict()
        self._buckets: dict[int, _Bucket] = {}
        self._staging = torch.empty(0, dtype=torch.uint8)  # grown (pinned on CUDA) by the first batch
        self._upload_stream: torch.cuda.Stream | None = None
        self._download_stream: torch.cuda.Stream | None = None
        self._uploaded: torch.cuda.Event | None = None  # the staging buffer's last copy up
        self._last_end: _Mark | None = None
        self._cond = threading.Condition()
        self._stopped = False
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.frames_done = 0
        self.frames_replaced = 0
        self.frames_skipped = 0
        self.frames_failed = 0
        self.batches = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, *, warmup: bool = False, progress: Callable[[int, int], None] | None = None) -> None:
        """Start the worker thread; with `warmup` it first runs every bucket once, then serves.

        The warm-up runs on the thread that serves, with its torch thread count: CUDA graphs (and
        torch.compile's graph trees) belong to the thread that records them. `progress(done, total)`
        is called on that thread after each bucket; `wait_ready()` says when it is over. Frames
        submitted meanwhile wait; warm-up batches are not reported to `on_batch`.
        """
        if self._thread is not None:
            raise RuntimeError("engine already started")
        self._thread = threading.Thread(target=self._run, args=(warmup, progress), name="stylize-engine", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the warm-up is over: True, or False on timeout. Raises what keeps the engine
        from serving: the warm-up's error, or `EngineClosed` when it was stopped first."""
        if not self._ready.wait(timeout):
            return False
        if self._failure is not None:
            raise self._failure
        if self._stopped:
            raise EngineClosed("engine stopped")
        return True

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._failure is None and not self._stopped

    def stop(self) -> None:
        """Fail the waiting frames, refuse new ones, hand out the batches in flight and join the worker."""
        self._close(EngineClosed("engine stopped"))
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._ready.set()

    # -- submitting --------------------------------------------------------------------------

    def submit(
        self, key: str, frame: np.ndarray, params: FrameParams, priority: Priority = Priority.LIVE
    ) -> Future[np.ndarray]:
        """Queue a yuv420p frame ((H*3/2, W) uint8, W even); resolves to the stylized frame.

        The result may be a view into memory shared with the other rows of its batch; it is never
        written again, so callers may keep it (and wrap it without a copy).
        """
        if frame.dtype != np.uint8 or frame.ndim != 2 or frame.shape[0] % 3 or frame.shape[1] % 2:
            raise ValueError(f"expected a (H*3/2, W) uint8 yuv420p frame, got {frame.dtype} {frame.shape}")
        future: Future[np.ndarray] = Future()
        request = _Request(key, frame, params, priority, future)
        with self._cond:
            if self._stopped:
                raise EngineClosed("engine stopped")
            old = self._pending.pop(key, None)
            self._pending[key] = request
            self._known.add(key)
            if priority is Priority.LIVE:
                self._active[key] = request.arrived
            if old is not None:
                self.frames_replaced += 1
            self._cond.notify_all()
        if old is not None:
            _fail(old.future, FrameReplaced(f"frame of {key!r} replaced by a newer one"))
        return future

    def forget(self, key: str) -> None:
        """A stream left: drop its waiting frame and its state (frames in flight finish harmlessly)."""
        with self._cond:
            request = self._pending.pop(key, None)
            self._active.pop(key, None)
            self._last.pop(key, None)
            self._known.discard(key)
        if request is not None:
            _fail(request.future, EngineClosed(f"stream {key!r} closed"))

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    # -- the worker thread -------------------------------------------------------------------

    def _run(self, warmup: bool, progress: Callable[[int, int], None] | None) -> None:
        # torch's CPU thread count belongs to the calling thread, so it is set here, where the model runs.
        if self._set_cpu_threads:
            torch.set_num_threads(self._set_cpu_threads)
        elif self.model.device.type == "cpu":
            torch.set_num_threads(auto_cpu_threads())
        self.cpu_threads = torch.get_num_threads()
        with torch.inference_mode(), self._streams():
            try:
                if warmup:
                    self._warm_up(progress)
            except Exception as e:
                logger.exception("engine warm-up failed")
                self._failure = e
                self._close(e)
                return
            finally:
                self._ready.set()
            try:
                self._serve()
            except Exception as e:
                logger.exception("engine worker failed")
                self._close(e)
                raise

    @contextmanager
    def _streams(self) -> Iterator[None]:
        """On CUDA: the model runs on a compute stream of its own, copies up and down on two more."""
        if not self._cuda:
            yield
            return
        device = self.model.device
        self._upload_stream = torch.cuda.Stream(device)
        self._download_stream = torch.cuda.Stream(device)
        self._uploaded = torch.cuda.Event()
        with torch.cuda.stream(torch.cuda.Stream(device)):
            yield

    def _warm_up(self, progress: Callable[[int, int], None] | None) -> None:
        frame = np.full((self.model.height * 3 // 2, self.model.width), 128, dtype=np.uint8)
        params = FrameParams(prompt="", strength=0.5)
        warmed = 0
        for size in list(self.buckets):
            if self._stopped or size > self.max_batch:
                break
            requests = [_Request(f"warmup-{i}", frame, params, Priority.JOB, Future()) for i in range(size)]
            try:
                self._collect(self._launch(requests))
            except torch.OutOfMemoryError:
                if not self._shrink(size):
                    raise
                # The buckets left are the ones already warm.
                if progress is not None:
                    progress(warmed, len(self.buckets))
                break
            warmed += 1
            if progress is not None:
                progress(warmed, len(self.buckets))

    def _serve(self) -> None:
        in_flight: deque[_Flight] = deque()
        while True:
            # 1. Hand out what has landed; with the pipeline full, wait for the oldest batch.
            while in_flight and (len(in_flight) >= PIPELINE_DEPTH or in_flight[0].landed()):
                self._complete(in_flight.popleft())
            # 2. Take the next batch. Only an idle device is worth waiting for more frames.
            batch = self._take_batch(wait=not in_flight)
            if batch is None:
                break
            if not batch:
                # Nothing else waiting: finish the batch in flight at once.
                self._complete(in_flight.popleft())
                continue
            # 3. Launch it behind the batch in flight.
            try:
                in_flight.append(self._launch(batch))
            except Exception as error:
                # Finish what is in flight first, so each key's frames still come out in order.
                while in_flight:
                    self._complete(in_flight.popleft())
                self._recover(batch, error)
        while in_flight:
            self._complete(in_flight.popleft())

    def _take_batch(self, *, wait: bool) -> list[_Request] | None:
        """Live frames first, oldest first, up to `max_batch`; [] when none waits and `wait` is off;
        None once stopped. A wait ends at `max_wait_ms` or when every active stream has a frame in."""
        with self._cond:
            # A wait may end with nothing to take: the frames that woke it were withdrawn meanwhile
            # (their streams left); then it starts again, as a waiting caller has no batch in flight.
            while wait:
                while not self._pending and not self._stopped:
                    self._cond.wait()
                deadline = time.perf_counter() + self.max_wait_s
                while not self._stopped:
                    live_waiting = sum(1 for r in self._pending.values() if r.priority is Priority.LIVE)
                    if live_waiting >= min(self._expected_live(), self.max_batch):
                        break
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._pending or self._stopped:
                    break
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

    def _launch(self, batch: list[_Request]) -> _Flight:
        """Queue a batch's work on the device and return without waiting for it (on CPU it is done)."""
        # 1. Frames that need no model: strength 0 is the input itself; a frame like the last reuses its output.
        answers: list[np.ndarray | None] = []
        skipped = 0
        for request in batch:
            if request.params.strength == 0.0:
                answers.append(request.frame)
                continue
            reused = self._similar_output(request)
            if reused is not None:
                skipped += 1
            answers.append(reused)
        flight = _Flight(batch, answers, skipped)
        # Rows grouped by frame size (normally one group), each group converted as one batch.
        flight.rows = sorted((i for i, a in enumerate(answers) if a is None), key=lambda i: batch[i].frame.shape)
        if not flight.rows:
            return flight
        work = [batch[i] for i in flight.rows]
        groups = [(shape, len(list(same))) for shape, same in groupby(r.frame.shape for r in work)]
        bucket = self._bucket(next(b for b in self.buckets if b >= len(work)))
        padded = work + [work[-1]] * (bucket.size - len(work))
        guided = any(r.params.guidance_scale > 1.0 for r in work)

        # 2. Stage: the per-row numbers and every frame into the staging buffer, one copy to the device.
        timesteps = [strength_to_timestep(r.params.strength, self._num_train_timesteps) for r in padded]
        uploaded = self._upload(timesteps, [r.params.guidance_scale for r in padded], [r.frame for r in work])
        start = self._mark()

        # 3. Colour in: each group resized and converted to [-1, 1] into the bucket's images at once;
        # padding rows repeat the last frame.
        offset, row = HEADER_BYTES_PER_ROW * bucket.size, 0
        for (rows, width), count in groups:
            frames = uploaded[offset : offset + count * rows * width].view(count, rows, width)
            bucket.images[row : row + count].copy_(self._colour.to_rgb(frames, (self.model.height, self.model.width)))
            offset, row = offset + count * rows * width, row + count
        if row < bucket.size:
            bucket.images[row:] = bucket.images[row - 1]

        # 4. Conditioning into the bucket's static inputs: embeddings, timesteps, noise (guidance).
        torch.stack(
            [self.prompts.blended(r.params.prompt, r.params.prompt_b, r.params.blend) for r in padded],
            0,
            out=bucket.embeds,
        )
        torch.cat([self._noise_for(r.params.seed) for r in padded], out=bucket.noise)
        bucket.timesteps.copy_(uploaded[: 8 * bucket.size].view(torch.int64))
        if guided:
            torch.stack([self.prompts.get(r.params.negative_prompt) for r in padded], 0, out=bucket.negatives)
            bucket.guidance.copy_(uploaded[8 * bucket.size : HEADER_BYTES_PER_ROW * bucket.size].view(torch.float32))
        conditioned = self._mark()

        # 5. The transform: the bucket's captured graph, or eager.
        stylized = self._transform(bucket, guided)
        modelled = self._mark()

        # 6. Colour out: each group converted and resized back to its frames' size into one buffer.
        out = torch.empty(sum(r.frame.size for r in work), dtype=torch.uint8, device=self.model.device)
        offset, row = 0, 0
        for (rows, width), count in groups:
            into = out[offset : offset + count * rows * width].view(count, rows, width)
            self._colour.to_yuv(stylized[row : row + count], out=into, size=(rows * 2 // 3, width))
            offset, row = offset + count * rows * width, row + count
        converted = self._mark()

        # 7. One copy back, into memory of this batch's own that no later batch reuses while a caller holds it.
        flight.host = self._download(out, converted)
        flight.marks = [start, conditioned, modelled, converted, self._mark(self._download_stream)]
        flight.idle_from, self._last_end = self._last_end, converted
        return flight

    def _upload(self, timesteps: list[int], guidance: list[float], frames: list[np.ndarray]) -> torch.Tensor:
        """Everything a batch sends to the device in one flat uint8 buffer, copied up once.

        The staging buffer is reused (pinned on CUDA, so the copy can run beside the model): it is
        written only after its previous copy up has been read.
        """
        rows = len(timesteps)
        header = HEADER_BYTES_PER_ROW * rows
        total = header + sum(frame.size for frame in frames)
        if self._uploaded is not None:
            self._uploaded.synchronize()
        if self._staging.numel() < total:
            self._staging = torch.empty(total, dtype=torch.uint8, pin_memory=self._cuda)
        staged = self._staging[:total]
        array = staged.numpy()
        array[: 8 * rows].view(np.int64)[:] = timesteps
        array[8 * rows : header].view(np.float32)[:] = guidance
        np.concatenate([frame.reshape(-1) for frame in frames], out=array[header:])
        if self._upload_stream is None or self._uploaded is None:
            return staged
        compute = torch.cuda.current_stream()
        with torch.cuda.stream(self._upload_stream):
            # Allocated on the copy stream, which writes it; the compute stream's reads are recorded below.
            uploaded = torch.empty(total, dtype=torch.uint8, device=self.model.device)
            uploaded.copy_(staged, non_blocking=True)
            self._uploaded.record()
        compute.wait_event(self._uploaded)
        uploaded.record_stream(compute)
        return uploaded

    def _download(self, out: torch.Tensor, converted: _Mark) -> torch.Tensor:
        """The one copy back: into pinned memory from torch's caching host allocator, which hands a
        block out again only once every view of it is gone. On CPU the output is already host memory."""
        if self._download_stream is None:
            return out
        host = torch.empty(out.shape, dtype=torch.uint8, pin_memory=True)
        converted.hold(self._download_stream)
        with torch.cuda.stream(self._download_stream):
            host.copy_(out, non_blocking=True)
        out.record_stream(self._download_stream)
        return host

    def _mark(self, stream: torch.cuda.Stream | None = None) -> _Mark:
        return _Mark(self._cuda).record(stream)

    def _bucket(self, size: int) -> _Bucket:
        bucket = self._buckets.get(size)
        if bucket is None:
            sequence, embedding = self.prompts.get("").shape  # what the text encoder really gives
            bucket = self._buckets[size] = _Bucket(size, self.model, sequence, embedding)
        return bucket

    def _transform(self, bucket: _Bucket, guided: bool) -> torch.Tensor:
        arguments = bucket.arguments(guided)
        if not self.cuda_graphs:
            return self.transform(*arguments)
        graph = bucket.graphs.get(guided)
        if graph is None:
            graph = bucket.graphs[guided] = _CapturedTransform(self.transform, arguments)
        return graph()

    def _collect(self, flight: _Flight) -> list[np.ndarray]:
        """Wait for a batch's copy back (the one sync per batch) and cut out each model row's frame."""
        landed: dict[int, np.ndarray] = {}
        if flight.host is not None:
            flight.marks[-1].wait()
            flat = flight.host.numpy()
            offset = 0
            for index in flight.rows:
                shape = flight.requests[index].frame.shape
                landed[index] = flat[offset : offset + shape[0] * shape[1]].reshape(shape)
                offset += shape[0] * shape[1]
        return [landed[i] if answer is None else answer for i, answer in enumerate(flight.answers)]

    def _complete(self, flight: _Flight) -> None:
        try:
            answers = self._collect(flight)
        except Exception as error:
            self._recover(flight.requests, error)
            return
        self._deliver(flight, answers)

    def _run_now(self, batch: list[_Request]) -> None:
        try:
            flight = self._launch(batch)
            answers = self._collect(flight)
        except Exception as error:
            self._recover(batch, error)
            return
        self._deliver(flight, answers)

    def _recover(self, batch: list[_Request], error: Exception) -> None:
        """Run a failed batch again in parts, so only frames that fail on their own are lost."""
        if isinstance(error, torch.OutOfMemoryError) and self._shrink(len(batch)):
            parts = [batch[i : i + self.max_batch] for i in range(0, len(batch), self.max_batch)]
        elif len(batch) > 1:
            logger.warning(
                "batch of %d failed (%s: %s); running it row by row", len(batch), type(error).__name__, error
            )
            parts = [[request] for request in batch]
        else:
            logger.error("frame of %r failed", batch[0].key, exc_info=error)
            self.frames_failed += 1
            _fail(batch[0].future, error)
            return
        for part in parts:
            self._run_now(part)

    def _shrink(self, failed: int) -> bool:
        """Out of device memory at `failed` frames: the largest bucket below it is `max_batch` from now on."""
        bucket = next((b for b in self.buckets if b >= failed), self.buckets[-1])
        smaller = [b for b in self.buckets if b < bucket]
        if not smaller:
            return False
        if self._cuda:
            torch.cuda.synchronize(self.model.device)  # no batch in flight still reads a graph dropped here
        self.max_batch = smaller[-1]
        self.buckets = buckets_for(self.max_batch)
        for size in [s for s in self._buckets if s > self.max_batch]:
            del self._buckets[size]
        if self._cuda:
            torch.cuda.empty_cache()
        logger.warning(
            "out of device memory at batch %d: max_batch is %d for the rest of the run", bucket, self.max_batch
        )
        return True

    def _deliver(self, flight: _Flight, answers: list[np.ndarray]) -> None:
        for request, answer in zip(flight.requests, answers, strict=True):
            _resolve(request.future, answer)
        if self.similarity_threshold > 0:
            with self._cond:
                for index in flight.rows:
                    request = flight.requests[index]
                    if request.key in self._known:
                        self._last[request.key] = _LastFrame(request.thumbnail, request.params, answers[index])
        self.frames_done += len(answers)
        self.frames_skipped += flight.skipped
        self.batches += 1
        if self._on_batch is not None:
            try:
                self._on_batch(flight.report())
            except Exception:
                logger.exception("on_batch callback failed")

    def _close(self, error: BaseException) -> None:
        """Refuse new frames and fail the waiting ones with `error`."""
        with self._cond:
            self._stopped = True
            pending = list(self._pending.values())
            self._pending.clear()
            self._cond.notify_all()
        for request in pending:
            _fail(request.future, error)

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

    def _similar_output(self, request: _Request) -> np.ndarray | None:
        if self.similarity_threshold <= 0:
            return None
        last = self._last.get(request.key)
        if last is None or last.params != request.params or last.output.shape != request.frame.shape:
            return None
        difference = np.abs(request.thumbnail - last.thumbnail).mean() / 255.0
        return last.output if difference < self.similarity_threshold else None


def _resolve(future: Future[np.ndarray], result: np.ndarray) -> None:
    try:
        future.set_result(result)
    except InvalidStateError:  # replaced, closed or cancelled meanwhile: nobody waits for it
        pass


def _fail(future: Future[np.ndarray], error: BaseException) -> None:
    try:
        future.set_exception(error)
    except InvalidStateError:
        pass
