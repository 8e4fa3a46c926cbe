"""Temporal memory: latent feedback per row (off is exactly today's output; rows never mix), and the
controller that holds a stream's flicker figure at a target."""

from __future__ import annotations

import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from pipeline import Engine, FrameParams, load_model
from pipeline.cached_attention import RING
from pipeline.models import ModelBundle
from pipeline.temporal import FEEDBACK_MAX, TemporalControl


@pytest.fixture(scope="module")
def model(model_cache: Path) -> ModelBundle:
    return load_model("tiny", data_dir=model_cache.parent, device=torch.device("cpu"))


FAMILIES = ["tiny", "tiny-sd15", "tiny-sdxl"]


@pytest.fixture(scope="module", params=FAMILIES)
def twin(request: pytest.FixtureRequest, model_cache: Path) -> ModelBundle:
    return load_model(request.param, data_dir=model_cache.parent, device=torch.device("cpu"))


PROMPTS = ["a fox", "ink", "neon", "a cat"]


def _rows(**fields: object) -> list[FrameParams]:
    """Four rows with their own prompts, strengths, seeds and step counts (1 to 4), and `fields`."""
    return [
        FrameParams(prompt=prompt, strength=strength, seed=seed, num_inference_steps=steps, **fields)  # type: ignore[arg-type]
        for prompt, strength, seed, steps in zip(PROMPTS, (0.5, 0.7, 0.3, 0.9), (1, 2, 3, 4), (1, 2, 3, 4), strict=True)
    ]


def _images(model: ModelBundle, rows: int, frame: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(100 + frame)
    return torch.rand((rows, 3, model.height, model.width), generator=generator) * 2 - 1


def _run(engine: Engine, images: torch.Tensor, rows: list[FrameParams]) -> torch.Tensor:
    """The rows through the engine's own per-row inputs and transform, as one batch."""
    inputs: dict[str, torch.Tensor] = {}
    statics: dict[str, int] = {}
    for part in engine.runner.parts:
        if part.optional and not part.wanted(rows):
            continue
        tensor = part.allocate(len(rows))
        header = (
            torch.from_numpy(part.header(rows).reshape(-1).view(np.uint8)) if part.header_dtype is not None else None
        )
        part.fill(tensor, rows, header)
        inputs[part.name] = tensor
        statics |= part.statics(rows)
    return engine.runner.transform(images, **inputs, **statics)


def _slotted(rows: list[FrameParams], slots: list[int], **fields: object) -> list[FrameParams]:
    return [replace(row, memory_slot=slot, **fields) for row, slot in zip(rows, slots, strict=True)]  # type: ignore[arg-type]


SLOTS = [3, 0, 2, 1]  # any slot order: each row reads and writes its own


def test_feedback_off_is_exactly_todays_output(twin: ModelBundle) -> None:
    engine = Engine(twin, max_batch=4, memory_slots=4)
    plain = _rows()
    for frame in range(2):
        images = _images(twin, 4, frame)
        remembering = _slotted(plain, SLOTS, feedback=0.5, feedback_now=0.0)  # memory on, nothing fed back
        assert torch.equal(_run(engine, images, plain), _run(engine, images, remembering))


def test_four_rows_with_memory_equal_each_row_alone_with_its_own(twin: ModelBundle) -> None:
    feedback = [0.0, 0.3, 0.6, 0.9]
    rows = [
        replace(row, feedback=0.5, feedback_now=f) for row, f in zip(_slotted(_rows(), SLOTS), feedback, strict=True)
    ]
    together = Engine(twin, max_batch=4, memory_slots=4)
    alone = Engine(twin, max_batch=4, memory_slots=4)
    outputs = []
    for frame in range(3):
        images = _images(twin, 4, frame)
        batched = _run(together, images, rows)
        singles = torch.cat([_run(alone, images[i : i + 1], [rows[i]]) for i in range(4)])
        torch.testing.assert_close(batched, singles, atol=1e-4, rtol=1e-4)
        outputs.append(batched)
    # The memory changes the picture from the second frame on, the more the more feedback.
    plain = _run(Engine(twin, max_batch=4), _images(twin, 4, 2), _rows())
    change = (outputs[2] - plain).abs().flatten(1).mean(dim=1)
    assert change[0] == 0.0 and change[1] > 0 and change[3] > change[1], change


def test_the_controller_raises_feedback_while_a_stream_flickers_past_its_target_and_lowers_it_under() -> None:
    control = TemporalControl()
    assert control.feedback("s", 0.2, None, None, True) == 0.0  # a first frame: its memory is not good yet
    control.wrote(["s"], good=True, cached=False)
    assert control.feedback("s", 0.2, None, 5.0, False) == 0.2  # no target: what it asked for
    assert control.describe("s") == {"feedback": 0.2, "target": None, "state": "fixed"}
    raised = [control.feedback("s", 0.2, 2.0, 6.0, False) for _ in range(10)]
    assert raised == sorted(raised) and raised[-1] > 0.2
    assert control.describe("s")["state"] == "raising"  # type: ignore[index]
    for _ in range(1000):
        control.feedback("s", 0.2, 2.0, 6.0, False)
    assert control.describe("s") == {"feedback": FEEDBACK_MAX, "target": 2.0, "state": "at most feedback"}
    lowered = [control.feedback("s", 0.2, 2.0, 1.0, False) for _ in range(20)]
    assert lowered == sorted(lowered, reverse=True) and lowered[-1] < FEEDBACK_MAX
    control.wrote(["s"], good=False, cached=False)  # a batch without feedback left the slot stale: none this frame
    assert control.feedback("s", 0.2, 2.0, 1.0, False) == 0.0
    control.forget("s")
    assert control.describe("s") is None


def _still(noise: np.random.Generator) -> np.ndarray:
    frame = np.full((96, 64), 128, dtype=np.uint8)
    frame[:64] = np.clip(120 + noise.integers(-6, 7, (64, 64)), 0, 255)
    return frame


def test_feedback_lowers_the_flicker_of_a_still_scene_in_the_engine(model: ModelBundle) -> None:
    # Each stream alone in the engine (one row a batch): the same noisy still scene, a different seed
    # per frame (what makes a one-step picture boil), with and without feedback.
    figures = {}
    for feedback in (0.0, 0.8):
        engine = Engine(model, max_batch=1)
        engine.start()
        noise = np.random.default_rng(0)
        try:
            for seed in range(24):
                params = FrameParams(prompt="x", strength=0.6, seed=seed, feedback=feedback)
                engine.submit("s", _still(noise), params).result(timeout=30)
            figures[feedback] = engine.flicker.of("s")
            described = engine.temporal.describe("s")
            assert described is not None and described["feedback"] == feedback
            engine.forget("s")
            assert engine.temporal.describe("s") is None and engine.flicker.of("s") is None
        finally:
            engine.stop()
    assert figures[0.8] is not None and figures[0.0] is not None
    print(
        f"\nflicker of a noisy still scene, tiny model: feedback 0 {figures[0.0]:.2f}, feedback 0.8 {figures[0.8]:.2f}"
    )
    assert figures[0.8] < figures[0.0] * 0.8, figures


def test_memory_of_departed_streams_is_freed_over_many_joins_and_leaves(model: ModelBundle) -> None:
    engine = Engine(model, max_batch=4, memory_slots=8)
    engine.start()
    noise = np.random.default_rng(1)
    remembered = engine.runner.transform.memory  # type: ignore[attr-defined]
    shapes = (tuple(remembered.latents.shape), tuple(engine.runner.flicker._last.shape))
    try:
        tracemalloc.start()
        for round_ in range(100):
            if round_ == 25:
                before = tracemalloc.take_snapshot()
            keys = [f"s{round_}-{i}" for i in range(2)]  # 200 joins in all: two people join, send frames, leave
            params = FrameParams(prompt="x", strength=0.5, feedback=0.5, flicker_target=2.0)
            for _ in range(2):
                for future in [engine.submit(key, _still(noise), params) for key in keys]:
                    future.result(timeout=30)
            for key in keys:
                engine.forget(key)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        assert grown < 256 * 1024, f"host memory grew {grown} bytes over 150 joins and leaves"
        # Nothing of anyone who left is kept; the device tensors never grew (no graph sees them move).
        assert engine.slots._slots == {} and sorted(engine.slots._free) == list(range(8))
        assert engine.flicker._figures == {} and engine.temporal._held == {} and engine.similarity._last == {}
        assert (tuple(remembered.latents.shape), tuple(engine.runner.flicker._last.shape)) == shapes
    finally:
        engine.stop()


# -- cached attention ---------------------------------------------------------------------------


def test_cached_attention_off_is_exactly_todays_output(twin: ModelBundle) -> None:
    engine = Engine(twin, max_batch=4, memory_slots=4)  # installs the caching processors
    images = _images(twin, 4, 0)
    installed = _run(engine, images, _rows())
    bank = engine.runner.transform.attention  # type: ignore[attr-defined]
    twin.unet.set_attn_processor(AttnProcessor2_0())  # diffusers' own, everywhere
    try:
        plain = _run(engine, images, _rows())
    finally:
        bank.install(twin.unet)
    assert torch.equal(installed, plain)


def test_four_rows_with_cached_attention_equal_each_row_alone_with_its_own(twin: ModelBundle) -> None:
    frames = [0, 1, 2, 4]  # how many past frames each row asks for
    together = Engine(twin, max_batch=4, memory_slots=4)

    def at(frame: int) -> list[FrameParams]:
        rows = _slotted(_rows(), SLOTS)
        return [
            replace(row, frames=asked, past=min(asked, frame), ring_at=frame % RING)
            for row, asked in zip(rows, frames, strict=True)
        ]

    batched = [_run(together, _images(twin, 4, frame), at(frame)) for frame in range(6)]  # past the ring's length
    alone = Engine(twin, max_batch=4, memory_slots=4)  # the same UNet's bank, emptied: each row alone now
    for row in range(4):
        for frame in range(6):
            single = _run(alone, _images(twin, 4, frame)[row : row + 1], [at(frame)[row]])
            torch.testing.assert_close(single[0], batched[frame][row], atol=1e-4, rtol=1e-4)
    # Seeing past frames changes the picture; a row that asks for none is as if no one cached.
    plain = _run(Engine(twin, max_batch=4), _images(twin, 4, 5), _rows())
    change = (batched[5] - plain).abs().flatten(1).mean(dim=1)
    assert change[0] < 1e-5 and (change[1:] > 1e-4).all(), change


def test_in_the_engine_a_row_that_caches_attention_leaves_its_neighbour_as_if_alone(model: ModelBundle) -> None:
    noise = np.random.default_rng(2)
    clip = [_still(noise) for _ in range(5)]
    asks = {"caches": FrameParams(prompt="x", strength=0.6, frames=2), "plain": FrameParams(prompt="x", strength=0.6)}

    def run(keys: list[str], max_batch: int) -> dict[str, list[np.ndarray]]:
        engine = Engine(model, max_batch=max_batch, max_wait_ms=1000.0)
        engine.start()
        try:
            out: dict[str, list[np.ndarray]] = {key: [] for key in keys}
            for frame in clip:
                futures = {key: engine.submit(key, frame, asks[key]) for key in keys}
                for key, future in futures.items():
                    out[key].append(future.result(timeout=30))
            return out
        finally:
            engine.stop()

    together = run(["caches", "plain"], max_batch=2)
    for key in ("caches", "plain"):
        alone = run([key], max_batch=1)[key]
        for a, b in zip(alone, together[key], strict=True):
            assert np.abs(a.astype(np.int16) - b.astype(np.int16)).max() <= 1, key
