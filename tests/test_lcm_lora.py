"""`[model] lcm_lora`: a LoRA fused into an SD 1.5 model at load, through diffusers' own loaders.

A random LoRA for the tiny SD 1.5 twin is made here with PEFT and saved in diffusers' layout; the
model loaded with it fused equals diffusers' img2img pipeline with `load_lora_weights` and
`fuse_lora`, row by row in a mixed batch, in fp32. A LoRA that is not there, or not a LoRA, is the
usual one-line error naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict

from pipeline import ModelUnavailableError, load_model
from tests.test_families import ROWS, _batched, _images, assert_rows_equal_diffusers


@pytest.fixture(scope="module")
def lora(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    load_model("tiny-sd15", data_dir=model_cache.parent, device=torch.device("cpu"))  # built once, as a folder
    unet = UNet2DConditionModel.from_pretrained(model_cache / "tiny-sd15", subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_" in name:  # PEFT starts B at zero (no effect): a random LoRA changes the picture
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    folder = tmp_path_factory.mktemp("lora")
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
    return folder


def test_a_fused_lora_equals_diffusers_loading_and_fusing_it(model_cache: Path, lora: Path) -> None:
    [weights] = lora.glob("*.safetensors")
    for source in (str(lora), str(weights)):  # a folder, or the file itself
        model = load_model("tiny-sd15", data_dir=model_cache.parent, device=torch.device("cpu"), lcm_lora=source)
        images = _images(len(ROWS), model.width)
        got = _batched(model, images, ROWS)

        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(model_cache / "tiny-sd15")
        pipe.load_lora_weights(lora)
        pipe.fuse_lora()
        assert_rows_equal_diffusers(pipe, images, ROWS, got)
    # The LoRA matters: without it the same rows differ.
    plain = load_model("tiny-sd15", data_dir=model_cache.parent, device=torch.device("cpu"))
    assert (_batched(plain, images, ROWS) - got).abs().mean() > 1e-3


def test_a_lora_that_is_not_there_or_not_a_lora_is_one_error_naming_it(model_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match=r"LoRA '/nowhere/lora.safetensors' \(file\): no such file"):
        load_model(
            "tiny-sd15", data_dir=model_cache.parent, device=torch.device("cpu"), lcm_lora="/nowhere/lora.safetensors"
        )
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelUnavailableError, match=r"LoRA .*junk\.safetensors.*diffusers could not load it"):
        load_model("tiny-sd15", data_dir=model_cache.parent, device=torch.device("cpu"), lcm_lora=str(junk))
