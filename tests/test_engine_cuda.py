"""On CUDA: the engine's captured graphs give what the eager transform gives (tiny model, fp16),
through the pinned staging buffer, the one copy each way and the batched colour conversion.

Skipped where there is no CUDA device; run them on one with `pytest -m cuda`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline import Engine, FrameParams, load_model
from pipeline.contract import BatchReport
from pipeline.control import load_controlnets
from pipeline.device import DeviceRunner
from pipeline.models import ModelBundle
from pipeline.onestep import OneStepImg2Img
from pipeline.prompts import PromptEmbeddings
from pipeline.row_inputs import one_step_inputs
from pipeline.temporal import LatentMemory

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def model(model_cache: Path) -> ModelBundle:
    return load_model("tiny", data_dir=model_cache.parent, device=torch.device("cuda"), dtype=torch.float16)


def _frame(seed: int, width: int = 64, height: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(16, 236, (height * 3 // 2, width), dtype=np.uint8)


# Two rounds of three streams: the first without guidance, the second with one guided row (the
# whole batch then runs the guided graph). One stream's frames are larger than the model: resized.
ROUNDS = [
    [
        ("a", _frame(1), FrameParams(prompt="a red fox", strength=0.5, seed=1)),
        ("b", _frame(2, 96, 96), FrameParams(prompt="neon city", strength=0.9, seed=2)),
        ("c", _frame(3), FrameParams(prompt="a red fox", strength=0.7, seed=3, prompt_b="a cat", blend=0.5)),
    ],
    [
        ("a", _frame(4), FrameParams(prompt="a red fox", strength=0.5, seed=1)),
        (
            "b",
            _frame(5, 96, 96),
            FrameParams(prompt="ink", strength=0.3, seed=2, negative_prompt="blur", guidance_scale=2.0),
        ),
        ("c", _frame(6), FrameParams(prompt="a cat", strength=0.6, seed=3)),
    ],
]


def _run(model: ModelBundle, *, graphs: bool) -> tuple[list[list[np.ndarray]], Engine, list[BatchReport]]:
    reports: list[BatchReport] = []
    # A long max_wait: each round's three frames go in one batch once all three streams are active.
    engine = Engine(model, max_batch=4, max_wait_ms=5000.0, cuda_graphs=graphs, on_batch=reports.append)
    first = [engine.submit(key, frame, params) for key, frame, params in ROUNDS[0]]
    engine.start(warmup=True)
    try:
        assert engine.wait_ready(timeout=300)
        results = [[f.result(timeout=60) for f in first]]
        for rows in ROUNDS[1:]:
            futures = [engine.submit(key, frame, params) for key, frame, params in rows]
            results.append([f.result(timeout=60) for f in futures])
    finally:
        engine.stop()
    return results, engine, reports


def test_graph_output_equals_eager_output_through_pinned_batched_copies(model: ModelBundle) -> None:
    eager, eager_engine, _ = _run(model, graphs=False)
    captured, engine, reports = _run(model, graphs=True)
    assert not eager_engine.cuda_graphs and engine.cuda_graphs
    assert [r.size for r in reports] == [3, 3]
    # Each bucket warmed up (and recorded its graph); the guided round recorded its own.
    assert set(engine.runner.buckets) == {1, 2, 4}
    plain = frozenset({"prompt_embeds", "timesteps", "noise"})
    one_step = (("num_steps", 1),)
    assert set(engine.runner.buckets[4].graphs) == {
        (plain, one_step),
        (plain | {"negative_embeds", "guidance_scale"}, one_step),
    }
    assert engine.runner._staging.is_pinned()
    for round_eager, round_captured, rows in zip(eager, captured, ROUNDS, strict=True):
        for single, graphed, (key, frame, _) in zip(round_eager, round_captured, rows, strict=True):
            assert graphed.shape == frame.shape and graphed.dtype == np.uint8
            # The copy back landed in pinned memory, handed out without another copy.
            assert torch.from_numpy(graphed).is_pinned()
            difference = np.abs(single.astype(np.int16) - graphed.astype(np.int16)).max()
            assert difference <= 2, f"row {key} differs by {difference} levels with graphs"
            assert np.abs(graphed.astype(np.int16) - frame.astype(np.int16)).mean() > 1  # the model ran


def test_results_stay_intact_while_later_batches_land(model: ModelBundle) -> None:
    engine = Engine(model, max_batch=2)
    engine.start(warmup=True)
    try:
        assert engine.wait_ready(timeout=300)
        params = FrameParams(prompt="x", strength=0.5)
        held = [engine.submit(f"s{i}", _frame(i), params).result(timeout=60) for i in range(2)]
        copies = [frame.copy() for frame in held]
        for round_ in range(20):
            futures = [engine.submit(f"s{i}", _frame(100 + 2 * round_ + i), params) for i in range(2)]
            for future in futures:
                future.result(timeout=60)
        for frame, copy in zip(held, copies, strict=True):
            assert np.array_equal(frame, copy)
    finally:
        engine.stop()


# -- the device runner alone: every bucket and every set of optional inputs, pipelining, syncs ----

GUIDED = FrameParams(prompt="ink", strength=0.4, seed=6, negative_prompt="blur", guidance_scale=3.0)


MEMORY_SLOTS = 8


def _runner(model: ModelBundle, graphs: bool) -> DeviceRunner:
    prompts = PromptEmbeddings(model)
    memory = LatentMemory(model, MEMORY_SLOTS + 1)
    return DeviceRunner(
        model,
        OneStepImg2Img(model, memory),
        one_step_inputs(model, prompts),
        cuda_graphs=graphs,
        memory_slots=MEMORY_SLOTS,
    )


def _batch(size: int, guided: bool, seed: int) -> tuple[list[np.ndarray], list[FrameParams]]:
    frames = [_frame(seed + i) for i in range(size)]
    params = [
        GUIDED if guided and i == 0 else FrameParams(prompt=f"row {i}", strength=0.5, seed=i) for i in range(size)
    ]
    return frames, params


def _levels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_each_buckets_graph_replays_what_eager_gives(model: ModelBundle, size: int, guided: bool) -> None:
    frames, params = _batch(size, guided, seed=10 * size)
    results = {}
    for graphs in (False, True):
        runner = _runner(model, graphs)
        with torch.inference_mode(), runner.streams():
            runner.collect(runner.launch(frames, params, size))  # records the graph
            results[graphs] = runner.collect(runner.launch(frames, params, size))  # replays it
            assert runner.graph_count() == (1 if graphs else 0)
    for eager, graphed in zip(results[False], results[True], strict=True):
        assert _levels(eager, graphed).max() <= 2


@pytest.mark.parametrize("spec", ["tiny-sd15", "tiny-sdxl"])
def test_mixed_step_counts_replay_one_graph_per_longest_count(model_cache: Path, spec: str) -> None:
    # Rows of 1, 2 and 4 steps in one batch: the batch's graph is keyed by its longest schedule, the
    # shorter rows right-aligned in it; replays give what eager gives, and a batch of 1-step rows
    # records (and replays) a graph of its own with one UNet call.
    family_model = load_model(spec, data_dir=model_cache.parent, device=torch.device("cuda"), dtype=torch.float16)
    frames = [_frame(30 + i) for i in range(4)]
    mixed = [
        FrameParams(prompt=f"row {i}", strength=0.6, seed=i, num_inference_steps=steps)
        for i, steps in enumerate([1, 2, 4, 1])
    ]
    single = [FrameParams(prompt=f"row {i}", strength=0.6, seed=i, num_inference_steps=1) for i in range(4)]
    results = {}
    for graphs in (False, True):
        runner = DeviceRunner(
            family_model,
            OneStepImg2Img(family_model),
            one_step_inputs(family_model, PromptEmbeddings(family_model)),
            cuda_graphs=graphs,
        )
        with torch.inference_mode(), runner.streams():
            for params in (mixed, single):
                runner.collect(runner.launch(frames, params, 4))
                results[graphs, len({p.num_inference_steps for p in params})] = runner.collect(
                    runner.launch(frames, params, 4)
                )
            assert runner.graph_count() == (2 if graphs else 0)
    for key in ((False, 3), (False, 1)):
        for eager, graphed in zip(results[key], results[True, key[1]], strict=True):
            assert _levels(eager, graphed).max() <= 2
    # The 1-step rows of the mixed batch equal the same rows run alone at 1 step.
    for index in (0, 3):
        assert _levels(results[True, 3][index], results[True, 1][index]).max() <= 2


def test_controlnet_kinds_replay_one_graph_per_set_of_kinds(model_cache: Path) -> None:
    # Rows with canny, depth, none and canny again at another scale: the control images are made before
    # the graph (eager), the batch's graph is keyed by the kinds that run; replays give what eager gives.
    sd15 = load_model("tiny-sd15", data_dir=model_cache.parent, device=torch.device("cuda"), dtype=torch.float16)
    nets = load_controlnets(["tiny"], sd15, data_dir=model_cache.parent)
    frames = [_frame(60 + i) for i in range(4)]
    looks = [("canny", 1.0), ("depth", 0.5), ("", 0.0), ("canny", 2.0)]
    both = [
        FrameParams(prompt=f"row {i}", strength=0.7, seed=i, num_inference_steps=1, control_kind=k, control_scale=s)
        for i, (k, s) in enumerate(looks)
    ]
    canny_only = [replace(row, control_scale=0.0) if row.control_kind == "depth" else row for row in both]
    results = {}
    for graphs in (False, True):
        runner = DeviceRunner(
            sd15,
            OneStepImg2Img(sd15, control=nets),
            one_step_inputs(sd15, PromptEmbeddings(sd15), nets),
            cuda_graphs=graphs,
        )
        with torch.inference_mode(), runner.streams():
            for name, params in (("both", both), ("canny", canny_only)):
                runner.collect(runner.launch(frames, params, 4))
                results[graphs, name] = runner.collect(runner.launch(frames, params, 4))
            assert runner.graph_count() == (2 if graphs else 0)
    for name in ("both", "canny"):
        for eager, graphed in zip(results[False, name], results[True, name], strict=True):
            assert _levels(eager, graphed).max() <= 2
    # The row without control is the same in both batches; the depth row is not.
    assert _levels(results[True, "both"][2], results[True, "canny"][2]).max() <= 2
    assert _levels(results[True, "both"][1], results[True, "canny"][1]).mean() > 1


def test_pipelined_batches_equal_serial_ones(model: ModelBundle) -> None:
    # Two batches in flight on the same bucket: the second's inputs must not reach the first's
    # output, nor its copy back overwrite the first's (a missing stream wait shows here).
    first, second = _batch(4, False, seed=1), _batch(4, True, seed=50)
    runner = _runner(model, graphs=True)
    with torch.inference_mode(), runner.streams():
        serial = [runner.collect(runner.launch(*batch, 4)) for batch in (first, second)]
        flights = [runner.launch(*batch, 4) for batch in (first, second)]
        pipelined = [runner.collect(flight) for flight in flights]
    for serial_rows, pipelined_rows in zip(serial, pipelined, strict=True):
        for a, b in zip(serial_rows, pipelined_rows, strict=True):
            assert np.array_equal(a, b)


def test_a_batch_launches_without_waiting_for_the_device(model: ModelBundle) -> None:
    # Everything after the first batch (prompts and noise cached, graph recorded) is queued without
    # a host sync: the only waits are the staging buffer's last copy up and the copy back in collect.
    frames, params = _batch(4, True, seed=7)
    runner = _runner(model, graphs=True)
    with torch.inference_mode(), runner.streams():
        runner.collect(runner.launch(frames, params, 4))
        torch.cuda.set_sync_debug_mode("error")
        try:
            flight = runner.launch(frames, params, 4)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        runner.collect(flight)


def test_flicker_pairs_come_back_with_the_batch_without_a_sync(model: ModelBundle) -> None:
    # The slots and the measure ride the staging buffer and the one copy back: with the flicker
    # measured, a launch still queues without a host sync.
    frames, params = _batch(4, False, seed=9)
    params = [replace(p, memory_slot=slot) for slot, p in enumerate(params)]
    moved = [np.roll(frame, 3, axis=1) for frame in frames]
    runner = _runner(model, graphs=True)
    with torch.inference_mode(), runner.streams():
        runner.collect(runner.launch(frames, params, 4, measure=True))
        torch.cuda.set_sync_debug_mode("error")
        try:
            again = runner.launch(frames, params, 4, measure=True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        runner.collect(again)
        same = again.measures()
        assert same is not None and np.abs(same).max() < 1e-3  # the same frames: nothing changed
        moving = runner.launch(moved, params, 4, measure=True)
        runner.collect(moving)
        pairs = moving.measures()
        assert pairs is not None and (pairs[:, 0] > 0).all() and (pairs[:, 1] > 0).all()


# fp16 against fp32 on the same weights: the tiny model's pictures agree to within this (levels of 255).
FP16_MEAN_LEVELS = 2.0
FP16_P99_LEVELS = 12.0


def test_fp16_stays_close_to_fp32(model: ModelBundle, model_cache: Path) -> None:
    full = load_model("tiny", data_dir=model_cache.parent, device=torch.device("cuda"), dtype=torch.float32)
    frames, params = _batch(4, True, seed=21)
    outputs = []
    for bundle in (model, full):
        runner = _runner(bundle, graphs=False)
        with torch.inference_mode(), runner.streams():
            outputs.append(runner.collect(runner.launch(frames, params, 4)))
    for half, single in zip(*outputs, strict=True):
        difference = _levels(half, single)
        assert difference.mean() <= FP16_MEAN_LEVELS and np.percentile(difference, 99) <= FP16_P99_LEVELS


# -- failures on the device: a bad row costs its frame, running out of memory shrinks the batch -----


class _Refusing:
    """The transform, refusing batches `refuse` picks (eager: a graph would record the refusal)."""

    def __init__(self, inner: Any, refuse: Any) -> None:
        self.inner, self.refuse, self.sizes = inner, refuse, []

    def __call__(self, images: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        self.sizes.append(images.shape[0])
        error = self.refuse(images)
        if error is not None:
            raise error
        return self.inner(images, **inputs)


def test_a_row_that_fails_on_the_device_costs_only_its_frame(model: ModelBundle) -> None:
    engine = Engine(model, max_batch=4, cuda_graphs=False)
    engine.runner.transform = _Refusing(
        engine.runner.transform,
        lambda images: RuntimeError("black frame") if bool((images.flatten(1).mean(1) < -0.9).any()) else None,
    )
    black = np.full((96, 64), 128, dtype=np.uint8)
    black[:64] = 16
    params = FrameParams(prompt="x", strength=0.5)
    good = [engine.submit("a", _frame(1), params), engine.submit("b", _frame(2), params)]
    bad = engine.submit("c", black, params)
    engine.start()
    try:
        assert all(future.result(timeout=60).shape == _frame(1).shape for future in good)
        assert isinstance(bad.exception(timeout=60), RuntimeError) and engine.frames_failed == 1
    finally:
        engine.stop()


def test_running_out_of_device_memory_shrinks_the_batch_and_serving_goes_on(model: ModelBundle) -> None:
    engine = Engine(model, max_batch=8, cuda_graphs=False)
    refusing = _Refusing(
        engine.runner.transform,
        lambda images: torch.OutOfMemoryError("CUDA out of memory (test)") if images.shape[0] > 2 else None,
    )
    engine.runner.transform = refusing
    params = FrameParams(prompt="x", strength=0.5)
    futures = [engine.submit(f"s{i}", _frame(i), params) for i in range(5)]
    engine.start()
    try:
        assert all(future.result(timeout=60).shape == _frame(0).shape for future in futures)
        assert (engine.max_batch, set(engine.runner.buckets) <= {1, 2}) == (2, True)
        assert engine.submit("s0", _frame(9), params).result(timeout=60).shape == _frame(0).shape
    finally:
        engine.stop()
