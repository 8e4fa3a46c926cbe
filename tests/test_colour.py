"""GPU-side colour conversion matches swscale (BT.601 limited range) within ±2 levels.

The same code runs on CUDA where present (the engine's device) and on the CPU otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from av import VideoFrame

from pipeline.colour import Yuv420pConverter, rgb_to_yuv420p, yuv420p_to_rgb

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _smooth_rgb(height: int = 96, width: int = 128) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([x / (width - 1) * 255, y / (height - 1) * 255, (1 + np.sin(x / 9.0 + y / 13.0)) * 127.5], axis=-1)
    return image.round().astype(np.uint8)


def test_rgb_to_yuv420p_matches_swscale() -> None:
    rgb = _smooth_rgb()
    expected = VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()
    tensor = torch.from_numpy(rgb).to(DEVICE).permute(2, 0, 1).float() / 255.0
    got = rgb_to_yuv420p(tensor).cpu().numpy()
    assert got.shape == expected.shape
    assert np.abs(got.astype(np.int16) - expected.astype(np.int16)).max() <= 2


def test_yuv420p_to_rgb_matches_swscale() -> None:
    yuv = VideoFrame.from_ndarray(_smooth_rgb(), format="rgb24").reformat(format="yuv420p")
    expected = yuv.reformat(format="rgb24").to_ndarray()
    got = yuv420p_to_rgb(torch.from_numpy(yuv.to_ndarray()).to(DEVICE))
    # The engine keeps float RGB; to compare with 8-bit output, quantise as swscale's fixed point does (truncating).
    got_rgb = (got.permute(1, 2, 0) * 255.0).floor().clamp(0, 255).to(torch.uint8).cpu().numpy()
    assert np.abs(got_rgb.astype(np.int16) - expected.astype(np.int16)).max() <= 2


@pytest.mark.parametrize(
    ("rgb", "luma"), [((255, 0, 0), 81), ((0, 255, 0), 145), ((0, 0, 255), 41), ((255, 255, 255), 235)]
)
def test_primaries_land_where_swscale_puts_them(rgb: tuple[int, int, int], luma: int) -> None:
    image = torch.tensor(rgb, dtype=torch.float32, device=DEVICE).view(3, 1, 1).expand(3, 4, 4) / 255.0
    frame = rgb_to_yuv420p(image).cpu().numpy()
    assert abs(int(frame[0, 0]) - luma) <= 1


def test_a_batch_converts_as_each_frame_alone_with_the_vae_range_folded_in() -> None:
    pictures = [_smooth_rgb(), _smooth_rgb()[::-1, ::-1].copy(), 255 - _smooth_rgb()]
    frames = [VideoFrame.from_ndarray(p, format="rgb24").reformat(format="yuv420p").to_ndarray() for p in pictures]
    batch = torch.from_numpy(np.stack(frames)).to(DEVICE)
    vae = Yuv420pConverter(DEVICE, (-1.0, 1.0))
    rgb = vae.to_rgb(batch)
    assert rgb.shape == (3, 3, 96, 128) and rgb.min() >= -1 and rgb.max() <= 1
    back = vae.to_yuv(rgb)
    for i, frame in enumerate(batch):
        alone = yuv420p_to_rgb(frame)
        torch.testing.assert_close(rgb[i], alone * 2 - 1, atol=1e-4, rtol=0)
        difference = (back[i].int() - rgb_to_yuv420p(alone).int()).abs().max()
        assert difference <= 1


@pytest.mark.parametrize("size", [(48, 64), (32, 32), (192, 256)])
def test_resizing_the_planes_equals_resizing_the_pictures(size: tuple[int, int]) -> None:
    # The engine resizes yuv planes (half the pixels of RGB); colour is affine and bilinear a weighted
    # mean, so with flat chroma the order is exact; with varying chroma only the chroma upsampling
    # differs (bilinear from the planes, nearest-neighbour in swscale's full-size conversion).
    vae = Yuv420pConverter(DEVICE, (-1.0, 1.0))
    grey = np.repeat(_smooth_rgb()[..., :1], 3, axis=-1)
    pictures = [grey, _smooth_rgb(), 255 - _smooth_rgb()]
    frames = [VideoFrame.from_ndarray(p, format="rgb24").reformat(format="yuv420p").to_ndarray() for p in pictures]
    batch = torch.from_numpy(np.stack(frames)).to(DEVICE)

    def resized(rgb: torch.Tensor, to: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(rgb, size=to, mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)

    rgb = vae.to_rgb(batch, size)
    assert rgb.shape == (3, 3, *size)
    expected = resized(vae.to_rgb(batch), size)
    torch.testing.assert_close(rgb[0], expected[0], atol=1e-4, rtol=0)
    assert (rgb - expected).abs().max() < 0.06 and (rgb - expected).abs().mean() < 0.01

    back = vae.to_yuv(rgb, size=(96, 128))
    assert back.shape == batch.shape
    difference = (back.int() - vae.to_yuv(resized(rgb, (96, 128))).int()).abs()
    assert difference[0].max() <= 1 and difference.max() <= 2
