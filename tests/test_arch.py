"""`arch:sd-turbo`: the real SD-Turbo architecture with random weights, the model the GPU benchmark runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline import Engine, FrameParams, load_model


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
