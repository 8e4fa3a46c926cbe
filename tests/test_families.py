"""Each family's batched transform equals diffusers' own img2img pipeline run one row at a time.

Tiny twins in fp32 on the CPU: a batch of rows with different prompts, strengths, seeds and step counts
(and a guided row), each row compared with `StableDiffusionImg2ImgPipeline` (sd15) or
`StableDiffusionXLImg2ImgPipeline` (sdxl) with the LCM scheduler, custom timesteps `row_timesteps`
and strength 1 (which keeps the whole custom schedule), and a generator seeded with the row's seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

from pipeline import Engine, FrameParams, ModelUnavailableError, load_model
from pipeline.families import FamilyError, detect_family
from pipeline.models import ModelBundle
from pipeline.onestep import row_timesteps

ROWS = [
    FrameParams(prompt="a watercolor fox", strength=0.9, seed=11, num_inference_steps=4),
    FrameParams(prompt="neon city", strength=0.5, seed=22, num_inference_steps=1),
    FrameParams(
        prompt="oil portrait",
        strength=0.7,
        seed=33,
        num_inference_steps=2,
        negative_prompt="blurry",
        guidance_scale=2.5,
    ),
    FrameParams(prompt="", strength=1.0, seed=44, num_inference_steps=3, prompt_b="ink", blend=0.0),
    # Guided without a negative prompt: SDXL's negative is zeros, SD's the empty prompt's embedding.
    FrameParams(prompt="dusk", strength=0.6, seed=55, num_inference_steps=2, guidance_scale=1.5),
]
PIPELINES = {"tiny-sd15": StableDiffusionImg2ImgPipeline, "tiny-sdxl": StableDiffusionXLImg2ImgPipeline}


def _images(count: int, size: int) -> torch.Tensor:
    return torch.rand((count, 3, size, size), generator=torch.Generator().manual_seed(7))


def assert_rows_equal_diffusers(pipe: Any, images: torch.Tensor, rows: list[FrameParams], got: torch.Tensor) -> None:
    """Each row of `got` equals diffusers' img2img `pipe` (given the LCM scheduler here) run on that row alone
    with the same timesteps and the row's seed."""
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    for index, row in enumerate(rows):
        expected = pipe(
            prompt=row.prompt,
            negative_prompt=row.negative_prompt or None,
            image=images[index : index + 1],
            strength=1.0,
            timesteps=row_timesteps(row.strength, row.num_inference_steps),
            guidance_scale=row.guidance_scale,
            generator=torch.Generator().manual_seed(row.seed),
            output_type="pt",
        ).images
        torch.testing.assert_close(got[index : index + 1], expected, atol=1e-4, rtol=1e-4, msg=f"row {index}: {row}")


def _batched(
    model: ModelBundle, images: torch.Tensor, rows: list[FrameParams], engine: Engine | None = None, **kwargs: Any
) -> torch.Tensor:
    """The rows through the engine's own per-row inputs and transform (a new engine's, made with `kwargs`
    such as its ControlNets, or `engine`'s), as one batch."""
    engine = engine or Engine(model, max_batch=len(rows), **kwargs)
    inputs = {}
    statics: dict[str, int] = {}
    for part in engine.runner.parts:
        if part.optional and not part.wanted(rows):
            continue
        tensor = part.allocate(len(rows))
        header = torch.from_numpy(part.header(rows).view(np.uint8)) if part.header_dtype is not None else None
        part.fill_from(tensor, rows, header, (images * 2 - 1).to(model.dtype))
        inputs[part.name] = tensor
        statics |= part.statics(rows)
    return engine.runner.transform(images * 2 - 1, **inputs, **statics) / 2 + 0.5


@pytest.mark.parametrize("spec", sorted(PIPELINES))
def test_mixed_batch_equals_diffusers_row_by_row(model_cache: Path, spec: str) -> None:
    model = load_model(spec, data_dir=model_cache.parent, device=torch.device("cpu"))
    images = _images(len(ROWS), model.width)
    got = _batched(model, images, ROWS)

    pipe = PIPELINES[spec].from_pretrained(model_cache / spec)
    assert_rows_equal_diffusers(pipe, images, ROWS, got)
    # The steps matter: the first row alone at one step differs.
    one_step = _batched(
        model, images[:1], [FrameParams(prompt=ROWS[0].prompt, strength=0.9, seed=11, num_inference_steps=1)]
    )
    assert (one_step - got[:1]).abs().mean() > 1e-3


def test_family_is_told_from_the_config_or_refused(model_cache: Path) -> None:
    assert detect_family("m", {"addition_embed_type": "text_time", "cross_attention_dim": 2048}, {}).name == "sdxl"
    assert detect_family("m", {"cross_attention_dim": 768}, {"_class_name": "PNDMScheduler"}).name == "sd15"
    assert detect_family("m", {"cross_attention_dim": 1024}, {}).name == "sd-turbo"
    with pytest.raises(FamilyError, match=r"cannot tell the family of model 'm'.*cross_attention_dim 32.*family"):
        detect_family("m", {"cross_attention_dim": 32}, {"_class_name": "EulerDiscreteScheduler"})
    folder = str(model_cache / "tiny")
    with pytest.raises(ModelUnavailableError, match="cannot tell the family"):
        load_model(folder, data_dir=model_cache.parent, device=torch.device("cpu"))
    with pytest.raises(ModelUnavailableError, match="unknown model family 'sd3'"):
        load_model(folder, data_dir=model_cache.parent, device=torch.device("cpu"), family="sd3")
    # Named, the folder loads as that family.
    assert (
        load_model(folder, data_dir=model_cache.parent, device=torch.device("cpu"), family="sd15").family.name == "sd15"
    )


def test_row_timesteps_descend_from_the_strength() -> None:
    assert row_timesteps(1.0, 1) == [999]
    assert row_timesteps(1.0, 4) == [999, 749, 500, 250]
    assert row_timesteps(0.5, 2) == [500, 250]
    assert row_timesteps(0.001, 4) == [4, 3, 2, 1]  # too low for 4 distinct steps: raised
    with pytest.raises(ValueError, match="num_inference_steps"):
        row_timesteps(0.5, 5)
