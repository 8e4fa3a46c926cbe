"""The batching engine: rows keep their own settings, stale frames are replaced, leavers lose only their own."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import Engine, EngineClosed, FrameParams, FrameReplaced, Priority, load_model
from pipeline.contract import BatchReport
from pipeline.engine import buckets_for
from pipeline.models import ModelBundle


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
    original = engine.transform.__call__

    def gated_call(*args: object) -> torch.Tensor:
        started.set()
        assert gate.wait(30)
        return original(*args)  # type: ignore[arg-type]

    engine.transform = type("GatedTransform", (), {"__call__": staticmethod(gated_call)})()  # type: ignore[assignment]
    engine.transform.num_train_timesteps = 1000  # type: ignore[attr-defined]
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


def test_buckets_are_powers_of_two_up_to_max_batch() -> None:
    assert buckets_for(1) == [1]
    assert buckets_for(8) == [1, 2, 4, 8]
    assert buckets_for(6) == [1, 2, 4, 6]


def test_invalid_params_are_refused() -> None:
    with pytest.raises(ValueError, match="strength"):
        FrameParams(prompt="x", strength=1.5)
    with pytest.raises(ValueError, match="blend"):
        FrameParams(prompt="x", strength=0.5, blend=-0.1)
