"""ControlNet per row: a batch whose rows use different kinds and scales (and none) equals diffusers'
ControlNet img2img pipeline run one row at a time, on tiny twins in fp32 on the CPU.

The control images are the engine's own (kornia's Canny, the depth twin), made on the device from
the batch's images and handed to diffusers as each row's `control_image`; diffusers runs the same
timesteps through a scheduler that keeps the row's custom schedule (its ControlNet pipelines take no
`timesteps=`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from diffusers import (
    LCMScheduler,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
)

from pipeline import FrameParams, ModelUnavailableError, load_model
from pipeline.control import ControlNets, canny, load_controlnets
from pipeline.control_names import ControlError, parse_models
from pipeline.onestep import row_timesteps
from tests.test_families import PIPELINES, _batched, _images, assert_rows_equal_diffusers

ROWS = [
    FrameParams(prompt="a fox", strength=0.9, seed=11, num_inference_steps=2, control_kind="canny", control_scale=1.0),
    FrameParams(prompt="neon", strength=0.6, seed=22, num_inference_steps=1, control_kind="depth", control_scale=0.5),
    FrameParams(prompt="plain", strength=0.7, seed=33, num_inference_steps=1),
    FrameParams(
        prompt="ink",
        strength=0.8,
        seed=44,
        num_inference_steps=3,
        control_kind="canny",
        control_scale=2.0,
        negative_prompt="blurry",
        guidance_scale=2.0,
    ),
]
CONTROL_PIPELINES = {
    "tiny-sd15": StableDiffusionControlNetImg2ImgPipeline,
    "tiny-sdxl": StableDiffusionXLControlNetImg2ImgPipeline,
}


class _KeptSchedule(LCMScheduler):
    """LCM with the row's own timesteps, whatever number of steps the pipeline asks for."""

    schedule: ClassVar[list[int]] = []

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, **_: Any) -> None:
        super().set_timesteps(device=device, timesteps=self.schedule)


@pytest.mark.parametrize("spec", sorted(CONTROL_PIPELINES))
def test_rows_with_different_controls_equal_diffusers_controlnet_pipeline(model_cache: Path, spec: str) -> None:
    model = load_model(spec, data_dir=model_cache.parent, device=torch.device("cpu"))
    nets = load_controlnets(["tiny"], model, data_dir=model_cache.parent)
    assert nets is not None and nets.kinds == ("canny", "depth")
    images = _images(len(ROWS), model.width)
    got = _batched(model, images, ROWS, control=nets)

    conditions = nets.conditions(images * 2 - 1, [0, 1])
    for index, row in enumerate(ROWS):
        if not row.control_scale:
            continue
        column = nets.column(row.control_kind)
        pipe = CONTROL_PIPELINES[spec].from_pretrained(model_cache / spec, controlnet=nets.nets[column])
        pipe.scheduler = _KeptSchedule.from_config(pipe.scheduler.config)
        pipe.scheduler.schedule = row_timesteps(row.strength, row.num_inference_steps)
        pipe.set_progress_bar_config(disable=True)
        expected = pipe(
            prompt=row.prompt,
            negative_prompt=row.negative_prompt or None,
            image=images[index : index + 1],
            control_image=conditions[column][index : index + 1],
            controlnet_conditioning_scale=row.control_scale,
            num_inference_steps=row.num_inference_steps,
            strength=1.0,
            guidance_scale=row.guidance_scale,
            generator=torch.Generator().manual_seed(row.seed),
            output_type="pt",
        ).images
        torch.testing.assert_close(got[index : index + 1], expected, atol=1e-4, rtol=1e-4, msg=f"row {index}: {row}")
    # A row without control is the plain img2img pipeline's.
    plain = [index for index, row in enumerate(ROWS) if not row.control_scale]
    assert_rows_equal_diffusers(
        PIPELINES[spec].from_pretrained(model_cache / spec),
        images[plain],
        [ROWS[i] for i in plain],
        got[plain],
    )
    # The control matters: the same rows with it off differ where it was on.
    off = _batched(model, images, [replace(row, control_scale=0.0) for row in ROWS], control=nets)
    assert (off[0] - got[0]).abs().mean() > 1e-3 and (off[1] - got[1]).abs().mean() > 1e-3
    torch.testing.assert_close(off[2], got[2])


def test_canny_gives_edges_of_the_frame_as_three_channels() -> None:
    image = torch.zeros((1, 3, 32, 32))
    image[..., 8:24, 8:24] = 1.0  # a white square: edges on its border only
    edges = canny(image)
    assert edges.shape == (1, 3, 32, 32) and set(edges.unique().tolist()) <= {0.0, 1.0}
    assert edges[0, 0, 16, 16] == 0 and edges[0, 0, 2, 2] == 0
    assert edges[0, 0, 6:10, 16].max() == 1 and edges[0, 0, 16, 6:10].max() == 1


def test_bad_control_configuration_is_one_error_naming_it(model_cache: Path, tmp_path: Path) -> None:
    assert parse_models([]) == {}
    assert parse_models(["tiny"]) == {"canny": "tiny", "depth": "tiny"}
    assert parse_models(["depth = /models/depth"]) == {"depth": "/models/depth"}
    with pytest.raises(ControlError, match="unknown kind 'pose'"):
        parse_models(["pose=lllyasviel/sd-controlnet-openpose"])
    with pytest.raises(ControlError, match="not kind=source"):
        parse_models(["lllyasviel/sd-controlnet-canny"])
    with pytest.raises(ControlError, match="twice"):
        parse_models(["canny=a/b", "canny=c/d"])
    sd15 = load_model("tiny-sd15", data_dir=model_cache.parent, device=torch.device("cpu"))
    with pytest.raises(ModelUnavailableError, match=r"ControlNet canny '/nowhere' \(folder\): no such folder"):
        load_controlnets(["canny=/nowhere"], sd15, data_dir=model_cache.parent)
    # A ControlNet for another family (the SDXL twin's) is refused naming both.
    xl = load_model("tiny-sdxl", data_dir=model_cache.parent, device=torch.device("cpu"))
    load_controlnets(["tiny"], xl, data_dir=model_cache.parent)
    other = str(model_cache.parent / "models" / "tiny-sdxl-control-canny")
    with pytest.raises(ModelUnavailableError, match=r"ControlNet canny .* does not fit the model 'tiny-sd15'"):
        load_controlnets([f"canny={other}"], sd15, data_dir=model_cache.parent)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelUnavailableError, match=r"ControlNet depth .*cannot load"):
        load_controlnets([f"depth={broken}"], sd15, data_dir=model_cache.parent)


def test_a_row_asking_for_a_kind_not_loaded_runs_without_control(model_cache: Path) -> None:
    model = load_model("tiny-sd15", data_dir=model_cache.parent, device=torch.device("cpu"))
    canny_only = load_controlnets(["canny=tiny"], model, data_dir=model_cache.parent)
    assert isinstance(canny_only, ControlNets) and canny_only.depth is None
    images = _images(1, model.width)
    depth_row = [ROWS[1]]
    torch.testing.assert_close(
        _batched(model, images, depth_row, control=canny_only),
        _batched(model, images, [replace(ROWS[1], control_scale=0.0)]),
    )
