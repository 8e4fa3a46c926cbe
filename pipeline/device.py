"""The engine's device side: a batch's frames up, through the transform, and back, without waiting.

`launch` stages a batch (every frame and the per-row numbers in one pinned buffer, one copy up),
converts colour into the bucket's static images, fills each per-row input (`row_inputs`), runs the
transform (one CUDA graph per bucket, set of optional inputs and number of steps), converts colour out and starts the
one copy back; `collect` waits for that copy (the batch's one sync) and cuts out each row's frame.
On CUDA the copies run on streams of their own, ordered by events; on the CPU every op has finished
by the time the next line runs, so the same code runs in order.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import groupby

import numpy as np
import torch

from pipeline.colour import Yuv420pConverter
from pipeline.contract import BatchReport, FrameParams
from pipeline.flicker import FlickerSlots
from pipeline.models import ModelBundle
from pipeline.row_inputs import RowInput

# Eager runs of a bucket before its capture, as torch's CUDA graph docs ask (lazy initialisation,
# cuDNN autotuning, torch.compile's own compilation all happen outside the graph).
GRAPH_WARMUP_RUNS = 2
# Each part's per-row numbers start on this boundary in the staging buffer, so any dtype can view them.
HEADER_ALIGN = 8
# The staging buffer's header of the rows' slots for the flicker measure (not a transform input).
_SLOTS = "_flicker_slots"


class Mark:
    """A point on the device's timeline: a CUDA event, read only after the batch's one sync, or on
    the CPU, where every op has finished when the next line runs, the clock."""

    def __init__(self, cuda: bool) -> None:
        self._event = torch.cuda.Event(enable_timing=True) if cuda else None
        self._time = 0.0

    def record(self, stream: torch.cuda.Stream | None = None) -> Mark:
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

    def seconds_to(self, later: Mark) -> float:
        if self._event is None or later._event is None:
            return later._time - self._time
        return self._event.elapsed_time(later._event) / 1000.0


GraphKey = tuple[frozenset[str], tuple[tuple[str, int], ...]]


class CapturedTransform:
    """The whole transform recorded once as a CUDA graph over a bucket's static inputs; a replay reads
    them and writes `output`. Record it on the serving thread: a graph belongs to the thread that
    records it."""

    def __init__(self, transform: Callable[..., torch.Tensor], images: torch.Tensor, inputs: dict[str, torch.Tensor]):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP_RUNS):
                transform(images, **inputs)
        torch.cuda.current_stream().wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        # A private memory pool per graph, so a graph dropped after an out-of-memory gives its memory
        # back; "thread_local" lets the server's other threads ask CUDA about memory meanwhile.
        with torch.cuda.graph(self._graph, capture_error_mode="thread_local"):
            self.output = transform(images, **inputs)

    def __call__(self) -> torch.Tensor:
        self._graph.replay()
        return self.output


class Bucket:
    """The static inputs of one batch size, written in place by every batch of that size, and the
    transforms captured over them, one per set of optional inputs that run."""

    def __init__(self, size: int, model: ModelBundle, parts: Sequence[RowInput]) -> None:
        self.size = size
        self.images = torch.empty(
            (size, 3, model.height, model.width),
            device=model.device,
            dtype=model.dtype,
            memory_format=torch.channels_last,
        )
        self.inputs = {part.name: part.allocate(size) for part in parts}
        # keyed by the optional inputs that run and the plain-number arguments (the steps a batch runs)
        self.graphs: dict[GraphKey, CapturedTransform] = {}
        # Every key a batch of this size has run under, captured or eager: what a CUDA graph would be
        # recorded for, so the CPU too can tell a change of look that would re-capture from one that would not.
        self.keys: set[GraphKey] = set()


@dataclass
class DeviceFlight:
    """A batch on the device: where its rows land once copied back, and its marks."""

    shapes: list[tuple[int, ...]]  # each row's frame shape, in the order of the copy back
    host: torch.Tensor  # every row's yuv420p, filled by the one copy back (then each row's flicker pair)
    measured_at: int | None = None  # where in `host` the rows' (d_in, d_out) float32 pairs start
    marks: list[Mark] = field(default_factory=list)  # start, conditioned, modelled, converted, landed
    idle_from: Mark | None = None  # where the device's previous batch ended

    def landed(self) -> bool:
        return self.marks[-1].reached()

    def measures(self) -> np.ndarray | None:
        """Each row's (d_in, d_out) (`pipeline.flicker`), (rows, 2); read it after `collect`."""
        if self.measured_at is None:
            return None
        rows = len(self.shapes)
        raw = self.host.numpy()[self.measured_at : self.measured_at + rows * 8]
        return raw.view(np.float32).reshape(rows, 2)

    def report(self, size: int, skipped: int) -> BatchReport:
        start, conditioned, modelled, converted, landed = self.marks
        stages = {
            "preprocess": start.seconds_to(conditioned),
            "model": conditioned.seconds_to(modelled),
            "postprocess": modelled.seconds_to(landed),
        }
        idle = self.idle_from.seconds_to(start) if self.idle_from is not None else 0.0
        return BatchReport(size, skipped, stages, busy_s=start.seconds_to(converted), idle_s=max(0.0, idle))


class DeviceRunner:
    """Owns the device side of the engine: buckets and their graphs, staging, streams and marks.

    Use it from one thread, inside `streams()`: that thread records the graphs and replays them.
    """

    def __init__(
        self,
        model: ModelBundle,
        transform: Callable[..., torch.Tensor],
        parts: Sequence[RowInput],
        *,
        cuda_graphs: bool,
        memory_slots: int = 0,
    ) -> None:
        self.model = model
        self.transform = transform  # transform(images, **{part.name: tensor}) -> images in [-1, 1]
        self.parts = list(parts)
        self.cuda = model.device.type == "cuda"
        self.cuda_graphs = cuda_graphs and self.cuda
        self.buckets: dict[int, Bucket] = {}
        self._colour = Yuv420pConverter(model.device, (-1.0, 1.0))
        self._staging = torch.empty(0, dtype=torch.uint8)  # grown (pinned on CUDA) by the first batch
        self._upload_stream: torch.cuda.Stream | None = None
        self._download_stream: torch.cuda.Stream | None = None
        self._uploaded: torch.cuda.Event | None = None  # the staging buffer's last copy up
        self._last_end: Mark | None = None
        self.flicker = FlickerSlots(model.device, memory_slots + 1)  # the scratch slot too

    @contextmanager
    def streams(self) -> Iterator[None]:
        """On CUDA: the model runs on a compute stream of its own, copies up and down on two more."""
        if not self.cuda:
            yield
            return
        device = self.model.device
        self._upload_stream = torch.cuda.Stream(device)
        self._download_stream = torch.cuda.Stream(device)
        self._uploaded = torch.cuda.Event()
        with torch.cuda.stream(torch.cuda.Stream(device)):
            yield

    def launch(
        self,
        frames: Sequence[np.ndarray],
        params: Sequence[FrameParams],
        bucket_size: int,
        measure: bool = False,
    ) -> DeviceFlight:
        """Queue a batch's work on the device and return without waiting for it (on CPU it is done).

        Rows are grouped by frame size (normally one group), each group converted as one batch; the
        copy back holds the rows in `flight.shapes`' order, which is the order of `frames` sorted by shape.
        With `measure`, each row's flicker pair (against its `memory_slot`'s last thumbnails) is
        measured and comes back with the frames (`flight.measures()`).
        """
        bucket = self._bucket(bucket_size)
        padded = [*params, *[params[-1]] * (bucket.size - len(params))]  # padding rows repeat the last
        running = [p for p in self.parts if not p.optional or p.wanted(padded)]
        statics = {name: value for p in running for name, value in p.statics(padded).items()}
        groups = [(shape, len(list(same))) for shape, same in groupby(frame.shape for frame in frames)]

        # 1. Stage: the per-row numbers and every frame into the staging buffer, one copy to the device.
        headers = {p.name: p.header(padded) for p in running if p.header_dtype is not None}
        if measure:
            headers[_SLOTS] = np.array([p.memory_slot for p in params], dtype=np.int64)
        uploaded, views, offset = self._upload(headers, frames)
        start = self._mark()

        # 2. Colour in: each group resized and converted to [-1, 1] into the bucket's images at once.
        row = 0
        for (rows, width), count in groups:
            group = uploaded[offset : offset + count * rows * width].view(count, rows, width)
            bucket.images[row : row + count].copy_(self._colour.to_rgb(group, (self.model.height, self.model.width)))
            offset, row = offset + count * rows * width, row + count
        if row < bucket.size:
            bucket.images[row:] = bucket.images[row - 1]

        # 3. Each per-row input into the bucket's static tensors.
        for part in running:
            part.fill_from(bucket.inputs[part.name], padded, views.get(part.name), bucket.images)
        conditioned = self._mark()

        # 4. The transform: the bucket's captured graph for the parts that run, or eager.
        stylized = self._transform(bucket, {p.name: bucket.inputs[p.name] for p in running}, statics)
        modelled = self._mark()

        # 5. Colour out: each group converted and resized back to its frames' size into one buffer,
        # and each row's flicker pair after them (8-aligned, so the host can view it as float32).
        pixels = sum(frame.size for frame in frames)
        measured_at = -(-pixels // HEADER_ALIGN) * HEADER_ALIGN if measure else None
        extra = measured_at - pixels + len(frames) * 8 if measured_at is not None else 0
        out = torch.empty(pixels + extra, dtype=torch.uint8, device=self.model.device)
        if measured_at is not None:
            pairs = self.flicker.measure(
                views[_SLOTS].view(torch.int64), bucket.images[: len(frames)], stylized[: len(frames)]
            )
            out[measured_at:].view(torch.float32).view(-1, 2).copy_(pairs)
        offset, row = 0, 0
        for (rows, width), count in groups:
            into = out[offset : offset + count * rows * width].view(count, rows, width)
            self._colour.to_yuv(stylized[row : row + count], out=into, size=(rows * 2 // 3, width))
            offset, row = offset + count * rows * width, row + count
        converted = self._mark()

        # 6. One copy back, into memory of this batch's own that no later batch reuses while a caller holds it.
        host = self._download(out, converted)
        flight = DeviceFlight([frame.shape for frame in frames], host, measured_at)
        flight.marks = [start, conditioned, modelled, converted, self._mark(self._download_stream)]
        flight.idle_from, self._last_end = self._last_end, converted
        return flight

    def collect(self, flight: DeviceFlight) -> list[np.ndarray]:
        """Wait for a batch's copy back (the one sync per batch) and cut out each row's frame."""
        flight.marks[-1].wait()
        flat = flight.host.numpy()
        landed, offset = [], 0
        for shape in flight.shapes:
            size = shape[0] * shape[1]
            landed.append(flat[offset : offset + size].reshape(shape))
            offset += size
        return landed

    def drop_buckets_above(self, size: int) -> None:
        """Free the buckets (and their graphs) larger than `size`, after running out of device memory."""
        if self.cuda:
            torch.cuda.synchronize(self.model.device)  # no batch in flight still reads a graph dropped here
        for larger in [s for s in self.buckets if s > size]:
            del self.buckets[larger]
        if self.cuda:
            torch.cuda.empty_cache()

    def graph_count(self) -> int:
        return sum(len(bucket.graphs) for bucket in self.buckets.values())

    def graph_keys(self) -> set[tuple[int, GraphKey]]:
        """(bucket size, key) of every transform a batch has run under (recorded or not)."""
        return {(size, key) for size, bucket in self.buckets.items() for key in bucket.keys}

    def _upload(
        self, headers: dict[str, np.ndarray], frames: Sequence[np.ndarray]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """Everything a batch sends to the device in one flat uint8 buffer, copied up once: the device
        buffer, each header's view of it, and where the frames start.

        The staging buffer is reused (pinned on CUDA, so the copy can run beside the model): it is
        written only after its previous copy up has been read.
        """
        spans: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, values in headers.items():
            spans[name] = (offset, values.nbytes)
            offset += -(-values.nbytes // HEADER_ALIGN) * HEADER_ALIGN
        total = offset + sum(frame.size for frame in frames)
        if self._uploaded is not None:
            self._uploaded.synchronize()
        if self._staging.numel() < total:
            self._staging = torch.empty(total, dtype=torch.uint8, pin_memory=self.cuda)
        staged = self._staging[:total]
        array = staged.numpy()
        for name, values in headers.items():
            start, size = spans[name]
            array[start : start + size] = values.reshape(-1).view(np.uint8)
        np.concatenate([frame.reshape(-1) for frame in frames], out=array[offset:])
        uploaded = staged
        if self._upload_stream is not None and self._uploaded is not None:
            compute = torch.cuda.current_stream()
            with torch.cuda.stream(self._upload_stream):
                # Allocated on the copy stream, which writes it; the compute stream's reads are recorded below.
                uploaded = torch.empty(total, dtype=torch.uint8, device=self.model.device)
                uploaded.copy_(staged, non_blocking=True)
                self._uploaded.record()
            compute.wait_event(self._uploaded)
            uploaded.record_stream(compute)
        views = {name: uploaded[start : start + size] for name, (start, size) in spans.items()}
        return uploaded, views, offset

    def _download(self, out: torch.Tensor, converted: Mark) -> torch.Tensor:
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

    def _mark(self, stream: torch.cuda.Stream | None = None) -> Mark:
        return Mark(self.cuda).record(stream)

    def _bucket(self, size: int) -> Bucket:
        bucket = self.buckets.get(size)
        if bucket is None:
            bucket = self.buckets[size] = Bucket(size, self.model, self.parts)
        return bucket

    def _transform(self, bucket: Bucket, inputs: dict[str, torch.Tensor], statics: dict[str, int]) -> torch.Tensor:
        key = (frozenset(inputs), tuple(sorted(statics.items())))
        bucket.keys.add(key)
        if not self.cuda_graphs:
            return self.transform(bucket.images, **inputs, **statics)
        graph = bucket.graphs.get(key)
        if graph is None:
            graph = bucket.graphs[key] = CapturedTransform(
                functools.partial(self.transform, **statics), bucket.images, inputs
            )
        return graph()
