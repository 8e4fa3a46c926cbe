"""The one-step transform equals diffusers' own img2img pipeline (Euler, as sd-turbo ships) on the tiny model.

The transform samples with LCM's step, whose boundary term c_skip(t) <= 4e-8 x_t at these timesteps is
far below the tolerance; the families' multi-step tests (test_families.py) compare with the LCM scheduler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline

from pipeline import Engine, FrameParams, load_model
from pipeline.colour import rgb_to_yuv420p
from pipeline.models import ModelBundle
from pipeline.onestep import OneStepImg2Img, strength_to_timestep


@pytest.fixture(scope="module")
def model(model_cache: Path) -> ModelBundle:
    return load_model("tiny", data_dir=model_cache.parent, device=torch.device("cpu"))


def _images(count: int, size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return torch.rand((count, 3, size, size), generator=generator)


@pytest.mark.parametrize("strength", [0.25, 0.5, 0.9, 1.0])
def test_one_step_equals_diffusers_img2img(model: ModelBundle, model_cache: Path, strength: float) -> None:
    prompt, seed = "a watercolor fox", 1234
    image = _images(1, model.width)
    timestep = strength_to_timestep(strength)

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        model_cache / "tiny", safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    # One step at exactly t: custom timesteps [t] with strength 1 keeps the whole (one-step) schedule.
    expected = pipe(
        prompt=prompt,
        image=image,
        strength=1.0,
        timesteps=[timestep],
        guidance_scale=0.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
    ).images

    transform = OneStepImg2Img(model)
    latent = model.width // model.vae_scale_factor
    noise = torch.randn((1, model.latent_channels, latent, latent), generator=torch.Generator().manual_seed(seed))
    embeds = model.text_encoder(
        model.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    )[0]
    # The transform works in the VAE's [-1, 1] on both ends; diffusers' "pt" output is in [0, 1].
    got = transform(image * 2 - 1, embeds, torch.tensor([[timestep]]), noise.unsqueeze(1)) / 2 + 0.5

    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    other = transform(image * 2 - 1, embeds, torch.tensor([[strength_to_timestep(0.1)]]), noise.unsqueeze(1)) / 2 + 0.5
    assert (other - got).abs().mean() > 1e-3, "the timestep must matter"


def test_guided_row_matches_diffusers_classifier_free_guidance(model: ModelBundle, model_cache: Path) -> None:
    image = _images(1, model.width)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        model_cache / "tiny", safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        prompt="neon city",
        negative_prompt="blurry",
        image=image,
        strength=1.0,
        timesteps=[600],
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(3),
        output_type="pt",
    ).images
    engine = Engine(model, max_batch=2)
    embeds = engine.prompts.get("neon city").unsqueeze(0)
    negative = engine.prompts.get("blurry").unsqueeze(0)
    latent = model.width // model.vae_scale_factor
    noise = torch.randn((1, model.latent_channels, latent, latent), generator=torch.Generator().manual_seed(3))
    got = (
        engine.runner.transform(
            image * 2 - 1, embeds, torch.tensor([[600]]), noise.unsqueeze(1), negative, torch.tensor([3.0])
        )
        / 2
        + 0.5
    )
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_strength_zero_returns_the_input_untouched(model: ModelBundle) -> None:
    engine = Engine(model)
    engine.start()
    try:
        frame = np.random.default_rng(0).integers(0, 256, (96 * 3 // 2, 128), dtype=np.uint8)
        out = engine.submit("s", frame, FrameParams(prompt="x", strength=0.0)).result(timeout=30)
        assert np.array_equal(out, frame)
    finally:
        engine.stop()


def test_prompt_change_costs_one_text_encoder_call(model: ModelBundle) -> None:
    engine = Engine(model)
    engine.start()
    try:
        frame = rgb_to_yuv420p(_images(1, 64)[0]).numpy()
        for _ in range(3):
            engine.submit("s", frame, FrameParams(prompt="first", strength=0.5)).result(timeout=30)
        calls = engine.prompts.encoder_calls
        for _ in range(3):
            engine.submit("s", frame, FrameParams(prompt="second", strength=0.5)).result(timeout=30)
        assert engine.prompts.encoder_calls == calls + 1
    finally:
        engine.stop()
