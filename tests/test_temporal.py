"""Temporal memory: latent feedback per row (off is exactly today's output; rows never mix), and the
controller that holds a stream's flicker figure at a target."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import Engine, FrameParams, load_model
from pipeline.cached_attention import RING, AttentionBank
from pipeline.models import ModelBundle
from pipeline.onestep import OneStepImg2Img, strength_to_timestep
from pipeline.row_inputs import AttentionVisibleInput
from pipeline.temporal import FEEDBACK_MAX, LatentMemory, TemporalControl


@pytest.fixture(scope="module")
def model(model_cache: Path) -> ModelBundle:
    return load_model("tiny", data_dir=model_cache.parent, device=torch.device("cpu"))


def _inputs(model: ModelBundle, rows: int, frame: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + frame)
    latent = model.width // model.vae_scale_factor
    embeds = model.text_encoder(
        model.tokenizer(
            ["a fox", "ink", "neon", "a cat"][:rows], padding="max_length", max_length=77, return_tensors="pt"
        ).input_ids
    )[0]
    return {
        "images": torch.rand((rows, 3, model.height, model.width), generator=generator) * 2 - 1,
        "prompt_embeds": embeds,
        "timesteps": torch.tensor([strength_to_timestep(s) for s in (0.5, 0.7, 0.3, 0.9)][:rows]),
        "noise": torch.randn((rows, model.latent_channels, latent, latent), generator=torch.Generator().manual_seed(3)),
    }


def test_feedback_off_is_exactly_todays_output(model: ModelBundle) -> None:
    plain = OneStepImg2Img(model)
    remembering = OneStepImg2Img(model, LatentMemory(model, 5))
    for frame in range(2):
        inputs = _inputs(model, 4, frame)
        today = plain(**inputs)
        with_zero = remembering(**inputs, memory_slots=torch.arange(4), feedback=torch.zeros(4))
        assert torch.equal(today, with_zero)


def test_four_rows_with_memory_equal_each_row_alone_with_its_own(model: ModelBundle) -> None:
    feedback = torch.tensor([0.0, 0.3, 0.6, 0.9])
    together = OneStepImg2Img(model, LatentMemory(model, 5))
    alone = [OneStepImg2Img(model, LatentMemory(model, 5)) for _ in range(4)]
    slots = torch.tensor([3, 0, 2, 1])  # any slot order: each row reads and writes its own
    outputs = []
    for frame in range(3):
        inputs = _inputs(model, 4, frame)
        batched = together(**inputs, memory_slots=slots, feedback=feedback)
        singles = torch.cat(
            [
                alone[row](
                    **{k: v[row : row + 1] for k, v in inputs.items()},
                    memory_slots=slots[row : row + 1],
                    feedback=feedback[row : row + 1],
                )
                for row in range(4)
            ]
        )
        torch.testing.assert_close(batched, singles, atol=1e-4, rtol=1e-4)
        outputs.append(batched)
    # The memory changes the picture from the second frame on, the more the more feedback.
    plain = OneStepImg2Img(model)(**_inputs(model, 4, 2))
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


def _attention_inputs(rows: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Per row (past, ring_at): which ring entries it sees and where this frame goes."""
    params = [FrameParams(prompt="x", strength=0.5, frames=4, past=past, ring_at=at) for past, at in rows]
    header = AttentionVisibleInput(torch.device("cpu")).header(params)
    return {
        "attention_visible": torch.from_numpy(header),
        "attention_write": torch.tensor([at for _, at in rows]),
    }


def test_cached_attention_off_is_exactly_todays_output(model: ModelBundle) -> None:
    plain = OneStepImg2Img(model)(**_inputs(model, 4, 0))
    bank = AttentionBank.of(model.unet, 5)
    cached = OneStepImg2Img(model, attention=bank)(**_inputs(model, 4, 0))
    assert torch.equal(plain, cached)


def test_four_rows_with_cached_attention_equal_each_row_alone_with_its_own(model: ModelBundle) -> None:
    frames = [0, 1, 2, 4]  # how many past frames each row asks for
    slots = torch.tensor([2, 0, 3, 1])
    bank = AttentionBank.of(model.unet, 5)
    transform = OneStepImg2Img(model, attention=bank)
    batched = []
    for frame in range(6):  # past the ring's length: its entries are reused
        rows = [(min(asked, frame), frame % RING) for asked in frames]
        batched.append(transform(**_inputs(model, 4, frame), memory_slots=slots, **_attention_inputs(rows)))
    AttentionBank.of(model.unet, 5)  # empty rings: each row now runs alone, in its own slot
    for row in range(4):
        for frame in range(6):
            inputs = {name: value[row : row + 1] for name, value in _inputs(model, 4, frame).items()}
            alone = transform(
                **inputs,
                memory_slots=slots[row : row + 1],
                **_attention_inputs([(min(frames[row], frame), frame % RING)]),
            )
            torch.testing.assert_close(alone[0], batched[frame][row], atol=1e-4, rtol=1e-4)
    # Seeing past frames changes the picture; a row that asks for none is as if no one cached.
    plain = OneStepImg2Img(model)(**_inputs(model, 4, 5))
    change = (batched[5] - plain).abs().flatten(1).mean(dim=1)
    assert change[0] < 1e-5 and (change[1:] > 1e-3).all(), change


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
