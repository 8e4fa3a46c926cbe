"""The batching engine: one worker thread owns the model; callers get futures.

Three parts: the scheduler (`pipeline.scheduler`: which frames go into the next batch, and when;
latest frame wins), the device runner (`pipeline.device`: staging, buckets and graphs, copies up and
down) and this glue, which owns the thread, answers the frames that need no model, and recovers.

Batches are pipelined. The worker launches batch k+1 while the device still runs batch k, then waits
for batch k's one copy back and hands its rows out. When no other frame is waiting the in-flight
batch is finished at once: a lone stream never waits for a batch to fill.

A batch that raises is run again row by row, so only a bad row's future fails; running out of
device memory shrinks `max_batch` for the rest of the run.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from pipeline.cached_attention import AttentionBank
from pipeline.contract import BatchReport, EngineClosed, FrameParams, FrameReplaced, Priority
from pipeline.control import ControlNets
from pipeline.device import DeviceFlight, DeviceRunner
from pipeline.families import MAX_STEPS
from pipeline.flicker import FlickerFigures
from pipeline.lora_bank import LoraBank
from pipeline.lora_files import LoraCache, LoraError, LoraWeights
from pipeline.lora_slots import LoraSlots
from pipeline.models import ModelBundle
from pipeline.onestep import OneStepImg2Img
from pipeline.prompts import PromptEmbeddings
from pipeline.row_inputs import attends, one_step_inputs, uses_memory
from pipeline.scheduler import Request, Scheduler, fail, resolve
from pipeline.similarity import SimilarityFilter
from pipeline.stream_slots import StreamSlots
from pipeline.temporal import LatentMemory, TemporalControl

logger = logging.getLogger(__name__)

# Batches launched and not yet handed out: one on the device, one queued behind it. More would only
# add latency, since the queued one already keeps the device busy while the older one is handed out.
PIPELINE_DEPTH = 2
# torch.compile modes that record CUDA graphs of their own; the engine's graphs stand aside for them.
COMPILE_MODES_WITH_GRAPHS = ("reduce-overhead", "max-autotune")


@dataclass
class _Flight:
    """A launched batch: the answers known at launch (None where the model's output goes), and the
    device's part, whose rows are `rows` (indices into `requests`) in the order of the copy back."""

    requests: list[Request]
    answers: list[np.ndarray | None]
    skipped: int
    rows: list[int]
    device: DeviceFlight | None
    fresh: list[bool] = field(default_factory=list)  # per model row: its stream's first frame in its slot

    def landed(self) -> bool:
        return self.device is None or self.device.landed()

    def report(self) -> BatchReport:
        if self.device is None:
            return BatchReport(len(self.requests), self.skipped, {})
        return self.device.report(len(self.requests), self.skipped)


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
        similarity_max_skip: int = 10,
        memory_slots: int = 32,
        lora_slots: int = 8,
        lora_max_rank: int = 64,
        lora_cache_size: int = 4,
        lora_dir: Path | None = None,
        prompt_cache_size: int = 64,
        compile_mode: str = "none",
        cuda_graphs: bool = True,
        cpu_threads: int = 0,
        warmup_steps: Sequence[int] = (),
        control: ControlNets | None = None,
        on_batch: Callable[[BatchReport], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.buckets = buckets_for(max_batch)
        self.scheduler = Scheduler(max_batch, max_wait_ms / 1000.0)
        self.similarity = SimilarityFilter(similarity_threshold, similarity_max_skip)
        self.slots = StreamSlots(memory_slots)
        self.flicker = FlickerFigures()  # per stream: `flicker.of(key)`
        self.temporal = TemporalControl()  # per stream: `temporal.describe(key)`
        self.prompts = PromptEmbeddings(model, prompt_cache_size)
        attention = AttentionBank.of(model.unet, memory_slots + 1)
        # LoRAs per row: read on the host (`load_lora`, any thread), copied into device slots here.
        self.lora_cache = LoraCache(model, lora_cache_size, lora_dir)
        self.lora_slots = LoraSlots(lora_slots)
        self.lora_bank = LoraBank.of(model.unet, lora_slots, lora_max_rank) if lora_slots else None
        self.control = control  # the ControlNets loaded, one per kind (`pipeline.control`)
        memory = LatentMemory(model, memory_slots + 1)
        transform: Callable[..., torch.Tensor] = OneStepImg2Img(model, memory, attention, self.lora_bank, control)
        if compile_mode != "none":
            # The transform is compiled, not the model's modules: those are shared (the text encoder
            # and the VAE with whoever else holds the bundle) and stay as loaded.
            transform = torch.compile(transform, mode=compile_mode)
        cuda = model.device.type == "cuda"
        graphs = cuda_graphs and cuda and compile_mode not in COMPILE_MODES_WITH_GRAPHS
        if cuda_graphs and cuda and not graphs:
            logger.info("torch.compile mode %r records its own CUDA graphs; the engine's stand aside", compile_mode)
        self.runner = DeviceRunner(
            model,
            transform,
            one_step_inputs(model, self.prompts, self.lora_bank, control),
            cuda_graphs=graphs,
            memory_slots=memory_slots,
        )
        # The step counts each bucket is warmed up (its graphs recorded) at: the family's default first.
        default = model.family.default_steps
        self.warmup_steps = [default, *sorted({int(n) for n in warmup_steps} - {default})]
        for steps in self.warmup_steps:
            if not 1 <= steps <= MAX_STEPS:
                raise ValueError(f"warmup_steps must be in [1, {MAX_STEPS}], got {steps}")
        self._set_cpu_threads = cpu_threads
        self.cpu_threads = 0  # torch CPU threads the model runs with, known once the worker runs
        self._on_batch = on_batch
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.frames_done = 0
        self.frames_skipped = 0
        self.frames_failed = 0
        self.batches = 0

    @property
    def max_batch(self) -> int:
        return self.scheduler.max_batch

    @property
    def frames_replaced(self) -> int:
        return self.scheduler.replaced

    @property
    def cuda_graphs(self) -> bool:
        return self.runner.cuda_graphs

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
        if self.scheduler.closed:
            raise EngineClosed("engine stopped")
        return True

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._failure is None and not self.scheduler.closed

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
        request = self.scheduler.request(key, frame, params, priority)
        try:
            old = self.scheduler.put(request)
        except RuntimeError:
            raise EngineClosed("engine stopped") from None
        if old is not None:
            fail(old.future, FrameReplaced(f"frame of {key!r} replaced by a newer one"))
        return request.future

    def forget(self, key: str) -> None:
        """A stream left: drop its waiting frame and its state (frames in flight finish harmlessly)."""
        request = self.scheduler.forget(key)
        self.similarity.forget(key)
        self._drop_state(key)
        if request is not None:
            fail(request.future, EngineClosed(f"stream {key!r} closed"))

    def _drop_state(self, key: str) -> None:
        self.slots.release(key)
        self.flicker.forget(key)
        self.temporal.forget(key)

    @property
    def pending(self) -> int:
        return self.scheduler.pending

    def load_lora(self, source: str) -> LoraWeights:
        """Read (and keep on the host) the LoRA at `source`, from any thread: call it off the engine thread
        when a person picks a LoRA, so their first frame with it only copies it into a slot. Raises
        `LoraError` naming the source and why it cannot be worn with this model."""
        return self.lora_cache.get(source)

    def place_loras(self, params: Sequence[FrameParams]) -> list[FrameParams | LoraError]:
        """Each row with the device slots of its LoRAs (copied in now where not there yet, evicting the
        least recently used not worn in this batch), or the `LoraError` that keeps it out of the batch:
        its LoRA cannot be read, more different LoRAs than slots in one batch, or its LoRAs' ranks
        together above `max_rank`. Engine thread only (or before `start`)."""
        busy: set[int] = set()
        placed: list[FrameParams | LoraError] = []
        for row in params:
            if not row.loras:
                placed.append(row)
                continue
            try:
                slots = tuple(self._lora_slot(source, busy) for source, _ in row.loras)
            except LoraError as error:
                placed.append(error)
                continue
            assert self.lora_bank is not None
            rank = self.lora_bank.rank_of(slots)
            if rank > self.lora_bank.max_rank:
                sources = ", ".join(source for source, _ in row.loras)
                problem = f"ranks together {rank}, above the slots' max_rank {self.lora_bank.max_rank}"
                placed.append(LoraError(sources, problem))
                continue
            placed.append(replace(row, lora_slots=slots))
        return placed

    def _lora_slot(self, source: str, busy: set[int]) -> int:
        if self.lora_bank is None:
            raise LoraError(source, "LoRAs are off on this server ([lora] slots = 0)")
        slot = self.lora_slots.find(source)
        if slot is None:
            weights = self.lora_cache.get(source)  # read now when the caller did not read it first
            slot = self.lora_slots.claim(source, busy)
            if slot is None:
                raise LoraError(
                    source, f"more than {self.lora_slots.capacity} different LoRAs in one batch ([lora] slots)"
                )
            try:
                self.lora_bank.load(slot, weights)
            except LoraError:
                self.lora_slots.drop(source)
                raise
        busy.add(slot)
        return slot

    # -- the worker thread -------------------------------------------------------------------

    def _run(self, warmup: bool, progress: Callable[[int, int], None] | None) -> None:
        # torch's CPU thread count belongs to the calling thread, so it is set here, where the model runs.
        if self._set_cpu_threads:
            torch.set_num_threads(self._set_cpu_threads)
        elif self.model.device.type == "cpu":
            torch.set_num_threads(auto_cpu_threads())
        self.cpu_threads = torch.get_num_threads()
        with torch.inference_mode(), self.runner.streams():
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

    def _warm_up(self, progress: Callable[[int, int], None] | None) -> None:
        frame = np.full((self.model.height * 3 // 2, self.model.width), 128, dtype=np.uint8)
        warmed = 0
        for size in list(self.buckets):
            if self.scheduler.closed or size > self.max_batch:
                break
            try:
                for steps in self.warmup_steps:
                    params = FrameParams(prompt="", strength=0.5, num_inference_steps=steps)
                    self.runner.collect(self.runner.launch([frame] * size, [params] * size, size))
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
            batch = self.scheduler.take(wait=not in_flight)
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

    def _launch(self, batch: list[Request]) -> _Flight:
        """Answer the frames that need no model (strength 0 is the input itself; a frame like its
        stream's last reuses that output) and launch the rest on the device."""
        answers: list[np.ndarray | None] = []
        skipped = 0
        for request in batch:
            if request.params.strength == 0.0:
                answers.append(request.frame)
                continue
            reused = self.similarity.reuse(request)
            if reused is not None:
                skipped += 1
            answers.append(reused)
        rows = sorted((i for i, a in enumerate(answers) if a is None), key=lambda i: batch[i].frame.shape)
        if not rows:
            return _Flight(batch, answers, skipped, rows, None)
        placed = self.place_loras([batch[i].params for i in rows])
        for index, row in zip(rows, placed, strict=True):
            if isinstance(row, LoraError):  # only this frame fails; the batch goes on without it
                fail(batch[index].future, row)
                answers[index] = batch[index].frame
                self.frames_failed += 1
        loras = {i: row.lora_slots for i, row in zip(rows, placed, strict=True) if isinstance(row, FrameParams)}
        rows = [i for i in rows if i in loras]
        if not rows:
            return _Flight(batch, answers, skipped, rows, None)
        work = [batch[i] for i in rows]
        size = next(b for b in self.buckets if b >= len(work))
        params, fresh = self._with_memory(work, [loras[i] for i in rows])
        device = self.runner.launch([r.frame for r in work], params, size, measure=True)
        self.temporal.wrote([r.key for r in work], good=uses_memory(params), cached=attends(params))
        for request in work:
            if not self.scheduler.known(request.key):  # left while taken: `forget` may have run first
                self._drop_state(request.key)
        return _Flight(batch, answers, skipped, rows, device, fresh)

    def _with_memory(
        self, work: list[Request], lora_slots: list[tuple[int, ...]]
    ) -> tuple[list[FrameParams], list[bool]]:
        """Each row's params with its stream's memory slot, the feedback it runs with now and its LoRAs' slots."""
        params, fresh = [], []
        for request, worn in zip(work, lora_slots, strict=True):
            slot, first = self.slots.take(request.key)
            feedback, past, ring_at = 0.0, 0, 0
            if slot != self.slots.scratch:
                asked = request.params
                flicker = self.flicker.of(request.key)
                feedback = self.temporal.feedback(request.key, asked.feedback, asked.flicker_target, flicker, first)
                past, ring_at = self.temporal.ring(request.key, asked.frames)
            params.append(
                replace(
                    request.params, feedback_now=feedback, memory_slot=slot, past=past, ring_at=ring_at, lora_slots=worn
                )
            )
            fresh.append(first)
        return params, fresh

    def _collect(self, flight: _Flight) -> list[np.ndarray]:
        landed = dict(zip(flight.rows, self.runner.collect(flight.device), strict=True)) if flight.device else {}
        return [landed[i] if answer is None else answer for i, answer in enumerate(flight.answers)]

    def _measure(self, flight: _Flight) -> list[float]:
        """Each model row's flicker pair into its stream's figure; the figures after them."""
        pairs = flight.device.measures() if flight.device is not None else None
        if pairs is None:
            return []
        figures = []
        for index, first, (d_in, d_out) in zip(flight.rows, flight.fresh, pairs.tolist(), strict=True):
            key = flight.requests[index].key
            if not first and self.slots.holds(key):  # a first frame compares with its slot's last holder
                figures.append(self.flicker.add(key, d_in, d_out))
                if not self.slots.holds(key):  # left meanwhile: its figure goes with it
                    self.flicker.forget(key)
        return figures

    def _complete(self, flight: _Flight) -> None:
        try:
            answers = self._collect(flight)
        except Exception as error:
            self._recover(flight.requests, error)
            return
        self._deliver(flight, answers)

    def _run_now(self, batch: list[Request]) -> None:
        try:
            flight = self._launch(batch)
            answers = self._collect(flight)
        except Exception as error:
            self._recover(batch, error)
            return
        self._deliver(flight, answers)

    def _recover(self, batch: list[Request], error: Exception) -> None:
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
            fail(batch[0].future, error)
            return
        for part in parts:
            self._run_now(part)

    def _shrink(self, failed: int) -> bool:
        """Out of device memory at `failed` frames: the largest bucket below it is `max_batch` from now on."""
        bucket = next((b for b in self.buckets if b >= failed), self.buckets[-1])
        smaller = [b for b in self.buckets if b < bucket]
        if not smaller:
            return False
        self.scheduler.max_batch = smaller[-1]
        self.buckets = buckets_for(self.max_batch)
        self.runner.drop_buckets_above(self.max_batch)
        logger.warning(
            "out of device memory at batch %d: max_batch is %d for the rest of the run", bucket, self.max_batch
        )
        return True

    def _deliver(self, flight: _Flight, answers: list[np.ndarray]) -> None:
        for request, answer in zip(flight.requests, answers, strict=True):
            resolve(request.future, answer)
        for index in flight.rows:
            self.similarity.remember(flight.requests[index], answers[index], self.scheduler.known)
        flicker = self._measure(flight)
        self.frames_done += len(answers)
        self.frames_skipped += flight.skipped
        self.batches += 1
        if self._on_batch is not None:
            try:
                self._on_batch(replace(flight.report(), flicker=flicker))
            except Exception:
                logger.exception("on_batch callback failed")

    def _close(self, error: BaseException) -> None:
        """Refuse new frames and fail the waiting ones with `error`."""
        for request in self.scheduler.close():
            fail(request.future, error)
