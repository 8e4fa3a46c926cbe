"""The flicker figure: measured per row on the device from the batch's own input and output images,
kept per stream in slots that never mix, smoothed per stream on the host, and reported per batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import Engine, FrameParams, load_model
from pipeline.contract import BatchReport
from pipeline.flicker import ALPHA, FLOOR, FlickerFigures, FlickerSlots, luma_thumbnails
from pipeline.models import ModelBundle
from pipeline.stream_slots import StreamSlots


def _images(*levels: float, size: int = 64) -> torch.Tensor:
    """One grey image per level (RGB in [-1, 1])."""
    return torch.stack([torch.full((3, size, size), level) for level in levels])


def test_thumbnails_are_luma_in_0_1_averaged_over_areas() -> None:
    image = torch.zeros(1, 3, 64, 64)
    image[0, 0] = 1.0  # pure red over black: luma 0.299 in [0, 1] terms after the [-1, 1] shift
    image[0, 1:] = -1.0
    image[0, :, :, 32:] = -1.0  # the right half black
    thumbs = luma_thumbnails(image)
    assert thumbs.shape == (1, 32, 32)
    assert thumbs[0, :, :16].allclose(torch.tensor((1.0 + 0.299 * 2 - 1.0) / 2), atol=1e-6)
    assert thumbs[0, :, 16:].allclose(torch.tensor(0.0), atol=1e-6)


def test_each_slot_compares_with_its_own_last_frame() -> None:
    slots = FlickerSlots(torch.device("cpu"), 4)
    rows = torch.tensor([0, 3])
    slots.measure(rows, _images(0.0, 0.0), _images(0.0, 0.0))
    # Row 0 still; row 1's input still and its output 0.2 brighter in [-1, 1]: 0.1 of full scale.
    second = slots.measure(rows, _images(0.0, 0.0), _images(0.0, 0.2))
    assert second[0].tolist() == [0.0, 0.0]
    assert second[1, 0].item() == 0.0 and second[1, 1].item() == pytest.approx(0.1, abs=1e-6)
    # The slots' order in a batch does not matter: each row reads and writes its own.
    swapped = slots.measure(rows.flip(0), _images(0.0, 0.4), _images(0.2, 0.0))
    assert swapped[0].tolist() == pytest.approx([0.0, 0.0], abs=1e-6)  # slot 3: as it was
    assert swapped[1].tolist() == pytest.approx([0.2, 0.0], abs=1e-6)  # slot 0: input moved, output not


def test_the_figure_is_a_ratio_of_smoothed_changes_with_a_floor_and_leaves_with_its_stream() -> None:
    figures = FlickerFigures()
    assert figures.of("a") is None
    assert figures.add("a", 0.04, 0.04) == pytest.approx(1.0)  # the output moves as the input does
    assert figures.add("a", 0.0, 0.04) == pytest.approx(0.04 / ((1 - ALPHA) * 0.04))
    assert figures.add("b", 0.0, 0.02) == pytest.approx(0.02 / FLOOR)  # a still scene whose picture boils
    figures.forget("a")
    assert figures.of("a") is None and figures.of("b") is not None


def test_slots_are_freed_with_their_stream_and_past_the_capacity_rows_share_the_scratch_slot() -> None:
    slots = StreamSlots(2)
    assert slots.take("a") == (0, True) and slots.take("a") == (0, False)
    assert slots.take("b") == (1, True)
    assert slots.take("c") == (slots.scratch, True) and slots.scratch == 2 and not slots.holds("c")
    slots.release("a")
    assert slots.take("c") == (0, True), "a freed slot is taken again, fresh"


@pytest.fixture(scope="module")
def model(model_cache: Path) -> ModelBundle:
    return load_model("tiny", data_dir=model_cache.parent, device=torch.device("cpu"))


def _frame(luma: int, noise: np.random.Generator | None = None) -> np.ndarray:
    frame = np.full((96, 64), 128, dtype=np.uint8)
    frame[:64] = luma
    if noise is not None:
        frame[:64] = np.clip(luma + noise.integers(-2, 3, (64, 64)), 0, 255)
    return frame


def test_a_boiling_picture_reads_high_and_a_following_one_near_one(model: ModelBundle) -> None:
    reports: list[BatchReport] = []
    engine = Engine(model, max_batch=2, max_wait_ms=50.0, on_batch=reports.append)
    generator = torch.Generator().manual_seed(0)

    def stand_in(images: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        # A flat frame ("follows") comes back as it is; a noisy one ("boils") comes back as fresh noise,
        # whichever row of whichever batch it is in.
        out = images.float().clone()
        noisy = out.flatten(1).std(dim=1) > 1e-3
        out[noisy] = torch.rand(out[noisy].shape, generator=generator) * 2 - 1
        return out

    engine.runner.transform = stand_in
    engine.start()
    noise = np.random.default_rng(0)
    try:
        for step in range(30):
            moving = _frame(40 + (step % 2) * 120)  # a scene that changes a lot every frame
            still = _frame(120, noise)  # a still scene with camera noise
            futures = [
                engine.submit("follows", moving, FrameParams(prompt="x", strength=0.5)),
                engine.submit("boils", still, FrameParams(prompt="x", strength=0.5)),
            ]
            for future in futures:
                future.result(timeout=30)
        follows, boils = engine.flicker.of("follows"), engine.flicker.of("boils")
        assert follows is not None and boils is not None
        assert follows == pytest.approx(1.0, abs=0.05), follows
        assert boils > 10.0, boils
        assert any(report.flicker for report in reports)
        engine.forget("boils")
        assert engine.flicker.of("boils") is None
    finally:
        engine.stop()
