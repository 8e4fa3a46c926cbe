"""`arch:`: the real architectures with random weights (SD-Turbo, SD 1.5, SDXL-Turbo), the models the GPU
benchmark runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from pipeline import Engine, FrameParams, load_model
from pipeline.families import detect_family
from pipeline.models import ARCH_DIR


@pytest.mark.heavy
def test_sd_turbo_architecture_builds_offline_and_stylizes_a_frame(tmp_path: Path) -> None:
    # 64² keeps it to seconds on a CPU; the weights are the full-size model's.
    model = load_model("arch:sd-turbo", data_dir=tmp_path, device=torch.device("cpu"), resolution=64)
    unet_params = sum(p.numel() for p in model.unet.parameters())
    text_params = sum(p.numel() for p in model.text_encoder.parameters())
    assert 860e6 < unet_params < 870e6  # SD 2.x's UNet: 866 M
    assert 330e6 < text_params < 360e6  # OpenCLIP ViT-H/14's text tower
    assert model.unet.config.cross_attention_dim == model.text_encoder.config.hidden_size == 1024
    assert (model.width, model.height) == (64, 64)

    engine = Engine(model, max_batch=1, max_wait_ms=0.0)
    engine.start()
    try:
        frame = np.random.default_rng(0).integers(16, 236, (96, 64), dtype=np.uint8)
        out = engine.submit("arch", frame, FrameParams(prompt="an oil painting", strength=0.6)).result(timeout=120)
    finally:
        engine.stop()
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - frame.astype(int)).mean() > 1  # the model changed the picture


# The other families' architectures, built on the meta device (shapes without memory: SDXL's 3.4 B
# parameters in fp32 would need 14 GB here): the parameter counts of the published models.
ARCH_PARAMETERS = {
    "sd15": {"unet": 859.52e6, "text_encoder": 123.06e6},
    "sdxl-turbo": {"unet": 2567.46e6, "text_encoder": 123.06e6, "text_encoder_2": 694.66e6},
}


@pytest.mark.parametrize("name", sorted(ARCH_PARAMETERS))
def test_family_architectures_are_the_published_ones(name: str) -> None:
    folder = ARCH_DIR / name
    configs = {part: json.loads((folder / f"{part}.json").read_text()) for part in ARCH_PARAMETERS[name]}
    with torch.device("meta"):
        parts = {"unet": UNet2DConditionModel.from_config(configs["unet"])}
        parts["text_encoder"] = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        if "text_encoder_2" in configs:
            parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"]))
    for part, expected in ARCH_PARAMETERS[name].items():
        count = sum(p.numel() for p in parts[part].parameters())
        assert abs(count - expected) < 0.01e6, f"{name} {part}: {count}"
    unet_config = configs["unet"]
    scheduler = json.loads((folder / "scheduler.json").read_text())
    family = detect_family(name, unet_config, scheduler)
    assert family.name == {"sd15": "sd15", "sdxl-turbo": "sdxl"}[name]
    if family.pooled:
        # The added conditioning takes the second encoder's pooled width and six size numbers.
        pooled = configs["text_encoder_2"]["projection_dim"]
        assert (
            unet_config["projection_class_embeddings_input_dim"] == pooled + 6 * unet_config["addition_time_embed_dim"]
        )
        assert unet_config["cross_attention_dim"] == sum(
            configs[p]["hidden_size"] for p in ("text_encoder", "text_encoder_2")
        )
        with torch.device("meta"):
            out = parts["unet"](
                torch.zeros(1, 4, 64, 64),
                torch.tensor([999]),
                encoder_hidden_states=torch.zeros(1, 77, unet_config["cross_attention_dim"]),
                added_cond_kwargs={"text_embeds": torch.zeros(1, pooled), "time_ids": torch.zeros(1, 6)},
            ).sample
        assert out.shape == (1, 4, 64, 64)
