"""The batching engine: rows keep their own settings, stale frames are replaced, leavers lose only their own."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import Engine, EngineClosed, FrameParams, FrameReplaced, Priority, load_model
from pipeline.contract import BatchReport
from pipeline.engine import PIPELINE_DEPTH, buckets_for
from pipeline.models import ModelBundle
from pipeline.scheduler import Request, Scheduler
from pipeline.similarity import SimilarityFilter


@pytest.fixture(scope="module")
def model(model_cache: Path) -> ModelBundle:
    return load_model("tiny", data_dir=model_cache.parent, device=torch.device("cpu"))


def _frame(seed: int, width: int = 96, height: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(16, 236, (height * 3 // 2, width), dtype=np.uint8)


ROWS = [
    ("a", _frame(1), FrameParams(prompt="a red fox", strength=0.5, seed=1)),
    ("b", _frame(2), FrameParams(prompt="neon city", strength=0.9, seed=2)),
    ("c", _frame(3, 128, 96), FrameParams(prompt="ink sketch", strength=0.3, seed=3, guidance_scale=2.0)),
    ("d", _frame(4), FrameParams(prompt="a red fox", strength=0.7, seed=4, prompt_b="a cat", blend=0.5)),
]


def test_each_row_of_a_mixed_batch_equals_that_row_alone(model: ModelBundle) -> None:
    alone = []
    engine = Engine(model, max_batch=1)
    engine.start()
    try:
        for key, frame, params in ROWS:
            alone.append(engine.submit(key, frame, params).result(timeout=30))
    finally:
        engine.stop()

    reports: list[BatchReport] = []
    engine = Engine(model, max_batch=8, on_batch=reports.append)
    # Queue everything before the worker starts so all rows land in one batch.
    futures = [engine.submit(key, frame, params) for key, frame, params in ROWS]
    engine.start()
    try:
        together = [f.result(timeout=30) for f in futures]
    finally:
        engine.stop()
    assert [r.size for r in reports] == [4]
    for (key, frame, _), single, batched in zip(ROWS, alone, together, strict=True):
        assert batched.shape == frame.shape
        difference = np.abs(single.astype(np.int16) - batched.astype(np.int16)).max()
        assert difference <= 1, f"row {key} differs by {difference} levels when batched"
    # The settings really differ per row: no two outputs of the same input size are alike.
    assert np.abs(together[0].astype(np.int16) - together[1].astype(np.int16)).mean() > 2


def test_a_newer_frame_replaces_the_waiting_one(model: ModelBundle) -> None:
    engine = Engine(model)
    params = FrameParams(prompt="x", strength=0.5)
    first = engine.submit("s", _frame(1), params)
    second = engine.submit("s", _frame(2), params)
    assert engine.pending == 1
    assert isinstance(first.exception(timeout=1), FrameReplaced)
    engine.start()
    try:
        assert second.result(timeout=30).shape == _frame(2).shape
        assert engine.frames_replaced == 1
    finally:
        engine.stop()


def test_live_frames_go_before_job_frames(model: ModelBundle) -> None:
    reports: list[BatchReport] = []
    engine = Engine(model, max_batch=1, on_batch=reports.append)
    order: list[str] = []
    lock = threading.Lock()

    def record(name: str) -> None:
        with lock:
            order.append(name)

    params = FrameParams(prompt="x", strength=0.5)
    job = engine.submit("job-1", _frame(1), params, Priority.JOB)
    live = engine.submit("live", _frame(2), params)
    job.add_done_callback(lambda _: record("job"))
    live.add_done_callback(lambda _: record("live"))
    engine.start()
    try:
        job.result(timeout=30)
        live.result(timeout=30)
    finally:
        engine.stop()
    assert order == ["live", "job"]


def test_a_stream_leaving_mid_batch_loses_only_its_own_frames(model: ModelBundle) -> None:
    gate = threading.Event()
    started = threading.Event()
    engine = Engine(model, max_batch=4)
    original = engine.runner.transform

    def gated_call(images: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        started.set()
        assert gate.wait(30)
        return original(images, **inputs)

    engine.runner.transform = gated_call
    params = FrameParams(prompt="x", strength=0.5)
    staying = engine.submit("stay", _frame(1), params)
    leaving = engine.submit("leave", _frame(2), params)
    engine.start()
    try:
        assert started.wait(30)
        # Mid-batch: "leave" hangs up and queues nothing more; "stay" sends its next frame.
        engine.forget("leave")
        staying_next = engine.submit("stay", _frame(3), params)
        gate.set()
        assert staying.result(timeout=30).shape == _frame(1).shape
        assert staying_next.result(timeout=30).shape == _frame(3).shape
        # The leaver's in-flight frame still completes harmlessly; nothing of it is left behind.
        leaving.result(timeout=30)
        late = engine.submit("leave", _frame(2), params)
        engine.forget("leave")
        assert isinstance(late.exception(timeout=5), EngineClosed)
        assert engine.pending == 0
    finally:
        engine.stop()


def test_stop_fails_waiting_frames_and_refuses_new_ones(model: ModelBundle) -> None:
    engine = Engine(model)
    waiting = engine.submit("s", _frame(1), FrameParams(prompt="x", strength=0.5))
    engine.stop()
    assert isinstance(waiting.exception(timeout=1), EngineClosed)
    with pytest.raises(EngineClosed):
        engine.submit("s", _frame(1), FrameParams(prompt="x", strength=0.5))


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((10, 10), dtype=np.uint8),
        np.zeros((96, 64), dtype=np.float32),
        np.zeros((100, 64), dtype=np.uint8),
        np.zeros((96, 63), dtype=np.uint8),
    ],
)
def test_malformed_frames_are_refused(model: ModelBundle, frame: np.ndarray) -> None:
    engine = Engine(model)
    with pytest.raises(ValueError):
        engine.submit("s", frame, FrameParams(prompt="x", strength=0.5))


def test_similarity_filter_reuses_the_last_output(model: ModelBundle) -> None:
    reports: list[BatchReport] = []
    engine = Engine(model, similarity_threshold=0.01, on_batch=reports.append)
    engine.start()
    try:
        params = FrameParams(prompt="x", strength=0.5)
        first = engine.submit("s", _frame(1), params).result(timeout=30)
        nearly = _frame(1).copy()
        nearly[0, 0] ^= 1
        again = engine.submit("s", nearly, params).result(timeout=30)
        assert again is first
        assert engine.frames_skipped == 1
        different = engine.submit("s", _frame(2), params).result(timeout=30)
        assert different is not first
    finally:
        engine.stop()


def test_the_similarity_filter_skips_at_random_by_how_alike_and_never_more_than_max_skip() -> None:
    params = FrameParams(prompt="x", strength=0.5)
    scheduler = Scheduler(1, 0.0)
    frame = _frame(1)
    output = np.zeros_like(frame)

    def request(changed_levels: int) -> Request:
        return scheduler.request(
            "s", (frame.astype(np.int16) + changed_levels).clip(0, 255).astype(np.uint8), params, Priority.LIVE
        )

    still = SimilarityFilter(0.05, max_skip=3)
    still.remember(request(0), output, lambda key: True)
    # The same frame: skipped for sure, three times in a row at most, then the model runs.
    assert [still.reuse(request(0)) is output for _ in range(4)] == [True, True, True, False]
    still.remember(request(0), output, lambda key: True)  # modelled: the count starts over
    assert still.reuse(request(0)) is output

    # A difference at the threshold or past it is never skipped; halfway, about half the time.
    drawn = SimilarityFilter(0.04, max_skip=10_000, seed=1)
    drawn.remember(request(0), output, lambda key: True)
    assert drawn.reuse(request(11)) is None  # 11/255 > 0.04
    halfway = [drawn.reuse(request(5)) is output for _ in range(400)]  # 5/255 ~ 0.0196: p ~ 0.51
    assert 0.4 < sum(halfway) / len(halfway) < 0.62


def test_buckets_are_powers_of_two_up_to_max_batch() -> None:
    assert buckets_for(1) == [1]
    assert buckets_for(8) == [1, 2, 4, 8]
    assert buckets_for(6) == [1, 2, 4, 6]


def test_invalid_params_are_refused() -> None:
    with pytest.raises(ValueError, match="strength"):
        FrameParams(prompt="x", strength=1.5)
    with pytest.raises(ValueError, match="blend"):
        FrameParams(prompt="x", strength=0.5, blend=-0.1)
    with pytest.raises(ValueError, match="num_inference_steps"):
        FrameParams(prompt="x", strength=0.5, num_inference_steps=5)


# -- failures, warm-up and pipelining (stand-in transforms where the model is beside the point) ----


class _StandIn:
    """Wraps a transform: records each call's batch size and thread, and can refuse batches."""

    def __init__(self, transform: Callable[..., torch.Tensor], refuse: Callable[[torch.Tensor], Exception | None]):
        self._transform = transform
        self._refuse = refuse
        self.num_train_timesteps = 1000
        self.sizes: list[int] = []
        self.steps: list[int] = []
        self.threads: set[int] = set()

    def __call__(self, images: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        self.sizes.append(images.shape[0])
        self.steps.append(int(inputs["num_steps"]))
        self.threads.add(threading.get_ident())
        error = self._refuse(images)
        if error is not None:
            raise error
        return self._transform(images, **inputs)


def _identity(images: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
    return images.float()


def _never(images: torch.Tensor) -> Exception | None:
    return None


def _black_frame() -> np.ndarray:
    frame = np.full((96, 64), 128, dtype=np.uint8)
    frame[:64] = 16
    return frame


def test_a_row_that_fails_costs_only_its_own_frame(model: ModelBundle) -> None:
    reports: list[BatchReport] = []
    engine = Engine(model, max_batch=4, on_batch=reports.append)

    def refuse_black(images: torch.Tensor) -> Exception | None:
        black = images.flatten(1).mean(1) < -0.9
        return RuntimeError("cannot stylize a black frame") if bool(black.any()) else None

    engine.runner.transform = _StandIn(engine.runner.transform, refuse_black)
    params = FrameParams(prompt="x", strength=0.5)
    good = [engine.submit("a", _frame(1), params), engine.submit("b", _frame(2), params)]
    bad = engine.submit("c", _black_frame(), params)
    engine.start()
    try:
        for future in good:
            assert future.result(timeout=30).shape == _frame(1).shape
        error = bad.exception(timeout=30)
        assert isinstance(error, RuntimeError) and "black frame" in str(error)
        assert engine.frames_failed == 1
        # The failed batch is not a served batch; the two rows that ran alone are.
        assert [r.size for r in reports] == [1, 1]
        # The stream whose frame failed carries on with its next frame.
        assert engine.submit("c", _frame(3), params).result(timeout=30).shape == _frame(3).shape
    finally:
        engine.stop()


def test_out_of_memory_shrinks_max_batch_for_the_rest_of_the_run(
    model: ModelBundle, caplog: pytest.LogCaptureFixture
) -> None:
    engine = Engine(model, max_batch=8)

    def refuse_large(images: torch.Tensor) -> Exception | None:
        return torch.OutOfMemoryError("CUDA out of memory (simulated)") if images.shape[0] > 2 else None

    stand_in = _StandIn(engine.runner.transform, refuse_large)
    engine.runner.transform = stand_in
    params = FrameParams(prompt="x", strength=0.5)
    futures = [engine.submit(f"s{i}", _frame(i), params) for i in range(5)]
    with caplog.at_level(logging.WARNING, logger="pipeline.engine"):
        engine.start()
        try:
            assert all(f.result(timeout=30).shape == _frame(0).shape for f in futures)
            assert (engine.max_batch, engine.buckets) == (2, [1, 2])
            # 8 failed, so 4; 4 failed, so 2: two chunks of 2, then the fifth frame alone.
            assert stand_in.sizes == [8, 4, 2, 2, 1]
            later = [engine.submit(f"s{i}", _frame(i), params) for i in range(4)]
            assert all(f.result(timeout=30).shape == _frame(0).shape for f in later)
        finally:
            engine.stop()
    assert max(stand_in.sizes[5:]) <= 2
    assert engine.frames_failed == 0
    shrinks = [r.getMessage() for r in caplog.records if "out of device memory" in r.getMessage()]
    assert shrinks == [
        "out of device memory at batch 8: max_batch is 4 for the rest of the run",
        "out of device memory at batch 4: max_batch is 2 for the rest of the run",
    ]


def test_warm_up_runs_every_bucket_on_the_thread_that_serves(model: ModelBundle) -> None:
    engine = Engine(model, max_batch=8)
    stand_in = _StandIn(engine.runner.transform, _never)
    engine.runner.transform = stand_in
    progress: list[tuple[int, int, int]] = []
    engine.start(warmup=True, progress=lambda done, total: progress.append((done, total, threading.get_ident())))
    try:
        assert engine.wait_ready(timeout=60)
        assert engine.ready
        assert stand_in.sizes == [1, 2, 4, 8]
        assert [(done, total) for done, total, _ in progress] == [(1, 4), (2, 4), (3, 4), (4, 4)]
        engine.submit("s", _frame(1), FrameParams(prompt="x", strength=0.5)).result(timeout=30)
        assert stand_in.sizes == [1, 2, 4, 8, 1]
    finally:
        engine.stop()
    warm_threads = {thread for _, _, thread in progress}
    assert stand_in.threads == warm_threads
    assert len(warm_threads) == 1 and threading.get_ident() not in warm_threads


def test_warm_up_records_each_bucket_at_the_default_and_the_asked_step_counts(model: ModelBundle) -> None:
    engine = Engine(model, max_batch=2, warmup_steps=[4, 2, 1])
    stand_in = _StandIn(engine.runner.transform, _never)
    engine.runner.transform = stand_in
    engine.start(warmup=True)
    try:
        assert engine.wait_ready(timeout=60)
        # The family's default (1 for the sd-turbo twin) first, then the others, for every bucket.
        assert list(zip(stand_in.sizes, stand_in.steps, strict=True)) == [
            (1, 1),
            (1, 2),
            (1, 4),
            (2, 1),
            (2, 2),
            (2, 4),
        ]
    finally:
        engine.stop()
    with pytest.raises(ValueError, match="warmup_steps"):
        Engine(model, warmup_steps=[5])


def test_out_of_memory_in_warm_up_drops_the_buckets_that_do_not_fit(model: ModelBundle) -> None:
    engine = Engine(model, max_batch=8)

    def refuse_large(images: torch.Tensor) -> Exception | None:
        return torch.OutOfMemoryError("CUDA out of memory (simulated)") if images.shape[0] > 2 else None

    engine.runner.transform = _StandIn(engine.runner.transform, refuse_large)
    progress: list[tuple[int, int]] = []
    engine.start(warmup=True, progress=lambda done, total: progress.append((done, total)))
    try:
        assert engine.wait_ready(timeout=60)
        assert (engine.max_batch, engine.buckets) == (2, [1, 2])
        assert progress == [(1, 4), (2, 4), (2, 2)]
    finally:
        engine.stop()


def test_wait_ready_raises_what_kept_the_engine_from_serving(model: ModelBundle) -> None:
    engine = Engine(model, max_batch=2)
    engine.runner.transform = _StandIn(engine.runner.transform, lambda images: ValueError("broken model"))
    engine.start(warmup=True)
    try:
        with pytest.raises(ValueError, match="broken model"):
            engine.wait_ready(timeout=60)
        assert not engine.ready
        with pytest.raises(EngineClosed):
            engine.submit("s", _frame(1), FrameParams(prompt="x", strength=0.5))
    finally:
        engine.stop()
    stopped = Engine(model)
    stopped.stop()
    with pytest.raises(EngineClosed):
        stopped.wait_ready(timeout=1)


def _tagged_frame(key: int, sequence: int) -> np.ndarray:
    """A 64² frame whose top half of luma says the key and bottom half the sequence number."""
    frame = np.full((96, 64), 128, dtype=np.uint8)
    frame[:32] = 30 + 20 * key
    frame[32:64] = 30 + 4 * (sequence % 45)
    return frame


def test_continuous_submission_from_many_streams(model: ModelBundle) -> None:
    """Every stream submits each new frame at once, never waiting for its result (as the server does)."""
    keys, frames_per_key = 6, 60
    progress = threading.Condition()
    batches: list[BatchReport] = []

    def on_batch(report: BatchReport) -> None:
        with progress:
            batches.append(report)
            progress.notify_all()

    engine = Engine(model, max_batch=4, max_wait_ms=1.0, on_batch=on_batch)
    engine.runner.transform = _StandIn(_identity, _never)
    params = FrameParams(prompt="x", strength=0.5)
    submitted: dict[int, list[tuple[int, Future[np.ndarray]]]] = {key: [] for key in range(keys)}
    landed: dict[int, list[int]] = {key: [] for key in range(keys)}
    most_outstanding = 0

    def done(key: int, sequence: int, future: Future[np.ndarray]) -> None:
        with progress:
            if future.exception() is None:
                landed[key].append(sequence)
            progress.notify_all()

    def stream(key: int) -> None:
        nonlocal most_outstanding
        seen = 0
        for sequence in range(frames_per_key):
            # A camera as fast as the engine: a new frame whenever a batch came back (or its own
            # frame did), whatever its frames in flight; every fifth frame right behind the one before.
            if sequence % 5:
                with progress:
                    last = submitted[key][-1][1]
                    assert progress.wait_for(lambda s=seen, f=last: len(batches) > s or f.done(), timeout=30)
                    seen = len(batches)
            future = engine.submit(f"stream-{key}", _tagged_frame(key, sequence), params)
            future.add_done_callback(lambda f, s=sequence: done(key, s, f))
            with progress:
                submitted[key].append((sequence, future))
                outstanding = sum(1 for _, f in submitted[key] if not f.done())
                most_outstanding = max(most_outstanding, outstanding)

    engine.start()
    try:
        threads = [threading.Thread(target=stream, args=(key,)) for key in range(keys)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for key in range(keys):
            for sequence, future in submitted[key]:
                error = future.exception(timeout=30)
                if error is not None:
                    assert isinstance(error, FrameReplaced)
                    continue
                result = future.result()
                # The result is this stream's own frame, the very one submitted with this future.
                assert abs(int(np.median(result[:32])) - (30 + 20 * key)) <= 2
                assert abs(int(np.median(result[32:64])) - (30 + 4 * (sequence % 45))) <= 2
            # The newest frame of each stream is never replaced; frames come out in order.
            assert submitted[key][-1][1].exception() is None
            assert landed[key] == sorted(landed[key])
    finally:
        engine.stop()
    # One frame waiting per stream, behind at most the pipeline's batches in flight.
    assert most_outstanding <= 1 + PIPELINE_DEPTH
    assert engine.frames_replaced > 0 and max(r.size for r in batches) > 1
    assert engine.frames_done + engine.frames_replaced == keys * frames_per_key
    assert engine.pending == 0


def test_stop_and_forget_under_continuous_submission_leave_no_future_behind(model: ModelBundle) -> None:
    engine = Engine(model, max_batch=4, max_wait_ms=1.0)
    engine.runner.transform = _StandIn(_identity, _never)
    params = FrameParams(prompt="x", strength=0.5)
    futures: list[Future[np.ndarray]] = []
    some_done = threading.Event()
    closed = threading.Event()

    def stream(key: int) -> None:
        sequence = 0
        while not closed.is_set():
            try:
                future = engine.submit(f"stream-{key}", _tagged_frame(key, sequence), params)
            except EngineClosed:
                return
            future.add_done_callback(lambda f: f.exception() or some_done.set())
            futures.append(future)
            sequence += 1
            if key == 0 and sequence == 20:
                engine.forget("stream-0")
                return

    engine.start()
    threads = [threading.Thread(target=stream, args=(key,)) for key in range(4)]
    for thread in threads:
        thread.start()
    assert some_done.wait(30)
    engine.stop()
    closed.set()
    for thread in threads:
        thread.join()
    assert futures and all(f.done() for f in futures)
    for future in futures:
        error = future.exception()
        assert error is None or isinstance(error, (FrameReplaced, EngineClosed))
    assert engine.pending == 0


def test_results_handed_out_are_never_written_again(model: ModelBundle) -> None:
    engine = Engine(model, max_batch=2)
    engine.start()
    try:
        params = FrameParams(prompt="x", strength=0.5)
        first = [engine.submit(f"s{i}", _frame(i), params).result(timeout=30) for i in range(2)]
        kept = [frame.copy() for frame in first]
        for round_ in range(3):
            for i in range(2):
                engine.submit(f"s{i}", _frame(10 + round_ * 2 + i), params).result(timeout=30)
        for held, copy in zip(first, kept, strict=True):
            assert np.array_equal(held, copy)
    finally:
        engine.stop()


def test_batch_report_says_how_long_the_device_worked_and_idled(model: ModelBundle) -> None:
    reports: list[BatchReport] = []
    engine = Engine(model, max_batch=2, on_batch=reports.append)
    engine.start()
    try:
        params = FrameParams(prompt="x", strength=0.5)
        for i in range(3):
            engine.submit("s", _frame(i), params).result(timeout=30)
        engine.submit("s", _frame(0), FrameParams(prompt="x", strength=0.0)).result(timeout=30)
    finally:
        engine.stop()
    modelled, untouched = reports[:3], reports[3]
    for report in modelled:
        assert report.busy_s > 0 and report.idle_s >= 0
        assert report.busy_s >= report.stages["model"]
    assert modelled[0].idle_s == 0  # nothing ran before it
    assert (untouched.busy_s, untouched.idle_s, untouched.stages) == (0.0, 0.0, {})


def test_a_stream_leaving_while_the_engine_waits_for_a_fuller_batch(model: ModelBundle) -> None:
    # Two active streams: with one frame in, the idle engine waits up to max_wait for the other's.
    # The waiting frame's stream leaves during that wait; the engine must go back to waiting, not die.
    engine = Engine(model, max_batch=4, max_wait_ms=1500.0)
    engine.scheduler.active_window_s = 60.0  # both stay active however slow this box is
    params = FrameParams(prompt="x", strength=0.5)
    first = [engine.submit("a", _frame(1), params), engine.submit("b", _frame(2), params)]
    engine.start()  # both frames are waiting: the first batch takes them together
    try:
        for future in first:
            future.result(timeout=30)
        lone = engine.submit("a", _frame(3), params)
        time.sleep(0.3)  # the engine is in its wait by now (it wakes on the submit, then waits for "b")
        engine.forget("a")
        assert isinstance(lone.exception(timeout=5), EngineClosed)
        time.sleep(1.5)  # past the wait's deadline with nothing left to take
        assert engine.ready
        assert engine.submit("b", _frame(4), params).result(timeout=30).shape == _frame(4).shape
    finally:
        engine.stop()
