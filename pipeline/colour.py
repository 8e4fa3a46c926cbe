"""yuv420p <-> RGB on the model's device, BT.601 limited range as swscale does it.

Frames travel as av's `to_ndarray(format="yuv420p")` layout: a (H*3/2, W) uint8 array holding the
Y plane followed by the U and V planes, so the CPU never converts colour.
"""

from __future__ import annotations

import torch

# BT.601 limited range: Y in [16, 235], chroma in [16, 240] (swscale's default for yuv420p).
_RGB_TO_YUV = torch.tensor(
    [
        [65.481, 128.553, 24.966],
        [-37.797, -74.203, 112.0],
        [112.0, -93.786, -18.214],
    ]
)
_YUV_TO_RGB = torch.linalg.inv(_RGB_TO_YUV)


def split_planes(frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views of the Y, U and V planes of a (H*3/2, W) yuv420p tensor."""
    rows, width = frame.shape
    height = rows * 2 // 3
    flat = frame.reshape(-1)
    luma = height * width
    chroma = luma // 4
    y = flat[:luma].view(height, width)
    u = flat[luma : luma + chroma].view(height // 2, width // 2)
    v = flat[luma + chroma : luma + 2 * chroma].view(height // 2, width // 2)
    return y, u, v


def yuv420p_to_rgb(frame: torch.Tensor) -> torch.Tensor:
    """(H*3/2, W) uint8 yuv420p -> (3, H, W) float32 RGB in [0, 1]."""
    y, u, v = split_planes(frame)
    y = y.float() - 16.0
    # Nearest-neighbour chroma upsampling, as swscale's default yuv2rgb path does.
    u = u.float().repeat_interleave(2, 0).repeat_interleave(2, 1) - 128.0
    v = v.float().repeat_interleave(2, 0).repeat_interleave(2, 1) - 128.0
    yuv = torch.stack((y, u, v))
    matrix = _YUV_TO_RGB.to(frame.device)
    rgb = torch.einsum("ij,jhw->ihw", matrix, yuv)
    return rgb.clamp_(0.0, 1.0)


def rgb_to_yuv420p(rgb: torch.Tensor) -> torch.Tensor:
    """(3, H, W) float RGB in [0, 1] -> (H*3/2, W) uint8 yuv420p; H and W must be even."""
    _, height, width = rgb.shape
    matrix = _RGB_TO_YUV.to(rgb.device)
    yuv = torch.einsum("ij,jhw->ihw", matrix, rgb.float())
    y = (yuv[0] + 16.0).round_().clamp_(0, 255)
    # Chroma is the mean of each 2x2 block.
    chroma = torch.nn.functional.avg_pool2d(yuv[1:].unsqueeze(0), 2).squeeze(0) + 128.0
    chroma = chroma.round_().clamp_(0, 255)
    out = torch.cat((y.reshape(-1), chroma[0].reshape(-1), chroma[1].reshape(-1)))
    return out.to(torch.uint8).view(height * 3 // 2, width)
