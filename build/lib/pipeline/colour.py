"""yuv420p <-> RGB on the model's device, BT.601 limited range as swscale does it, a batch at a time.

Frames travel as av's `to_ndarray(format="yuv420p")` layout: a (H*3/2, W) uint8 array holding the
Y plane followed by the U and V planes, so the CPU never converts colour. A batch is (B, H*3/2, W).

Where the model's size differs from the frames', the planes are resized, not the RGB pictures: the
colour matrices are affine and a bilinear resize is a weighted mean, so the order does not change the
result, and resizing one luma and two quarter-size chroma planes moves half the pixels of three RGB
planes, with the colour conversion itself at the smaller of the two sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# BT.601 limited range: Y in [16, 235], chroma in [16, 240] (swscale's default for yuv420p).
# Maps RGB in [0, 1] to Y, U, V levels before the offsets below are added.
_RGB_TO_YUV = torch.tensor(
    [
        [65.481, 128.553, 24.966],
        [-37.797, -74.203, 112.0],
        [112.0, -93.786, -18.214],
    ],
    dtype=torch.float64,
)
_YUV_TO_RGB = torch.linalg.inv(_RGB_TO_YUV)
_OFFSETS = torch.tensor([16.0, 128.0, 128.0], dtype=torch.float64)


def split_planes(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views of the Y, U and V planes of (..., H*3/2, W) yuv420p frames."""
    *lead, rows, width = frames.shape
    height = rows * 2 // 3
    flat = frames.reshape(*lead, rows * width)
    luma = height * width
    chroma = luma // 4
    y = flat[..., :luma].view(*lead, height, width)
    u = flat[..., luma : luma + chroma].view(*lead, height // 2, width // 2)
    v = flat[..., luma + chroma : luma + 2 * chroma].view(*lead, height // 2, width // 2)
    return y, u, v


class Yuv420pConverter:
    """Converts batches between yuv420p frames and float RGB in [low, high] on one device.

    The RGB range is folded into the matrices made here once: the engine asks for [-1, 1], what the
    VAE takes and gives, so neither direction spends a pass on `* 2 - 1` or `/ 2 + 0.5`.
    """

    def __init__(self, device: torch.device, rgb_range: tuple[float, float] = (0.0, 1.0)) -> None:
        self.low, self.high = rgb_range
        span = self.high - self.low
        # rgb = span * YUV_TO_RGB (yuv - offsets) + low, split into a luma column and a chroma part.
        to_rgb = _YUV_TO_RGB * span
        self._luma_to_rgb = to_rgb[:, 0].view(1, 3, 1, 1).to(device, torch.float32)
        self._chroma_to_rgb = to_rgb[:, 1:].to(device, torch.float32)
        self._rgb_bias = (self.low - to_rgb @ _OFFSETS).view(1, 3, 1, 1).to(device, torch.float32)
        # yuv = RGB_TO_YUV (rgb - low) / span + offsets
        to_yuv = _RGB_TO_YUV / span
        self._to_yuv = to_yuv.to(device, torch.float32)
        self._yuv_bias = (_OFFSETS - to_yuv @ torch.full((3,), self.low, dtype=torch.float64)).to(device, torch.float32)

    def to_rgb(self, frames: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, H*3/2, W) uint8 yuv420p -> (B, 3, H, W) float32 RGB in [low, high], or (B, 3, *size)."""
        y, u, v = split_planes(frames)
        luma, chroma = y.unsqueeze(1).float(), torch.stack((u, v), 1).float()
        if size is not None and size != tuple(y.shape[-2:]):
            luma, chroma = resize(luma, size), resize(chroma, size)
            rgb = torch.einsum("ij,bjhw->bihw", self._chroma_to_rgb, chroma) + self._rgb_bias
        else:
            # The chroma terms at quarter size, then nearest-neighbour upsampling as swscale's default
            # yuv2rgb path does: the same sums as upsampling first, on a quarter of the pixels.
            rgb = torch.einsum("ij,bjhw->bihw", self._chroma_to_rgb, chroma) + self._rgb_bias
            rgb = rgb.repeat_interleave(2, 2).repeat_interleave(2, 3)
        return torch.addcmul(rgb, luma, self._luma_to_rgb).clamp_(self.low, self.high)

    def to_yuv(
        self, rgb: torch.Tensor, out: torch.Tensor | None = None, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """(B, 3, h, w) float RGB in [low, high] -> (B, H*3/2, W) uint8 yuv420p, into `out` if given.

        (H, W) is `size`, else (h, w); both even. Chroma is the mean of each 2x2 block (pooled before
        the matrix: the same sums, on a quarter of the pixels); resized from (h, w), it is the planes
        taken at (h, w) and resized to (H/2, W/2).
        """
        batch, _, height, width = rgb.shape
        height, width = size or (height, width)
        if out is None:
            out = torch.empty((batch, height * 3 // 2, width), dtype=torch.uint8, device=rgb.device)
        elif not out.is_contiguous():
            raise ValueError("out must be contiguous: its planes are written through views")
        rgb = rgb.float()
        y = torch.einsum("j,bjhw->bhw", self._to_yuv[0], rgb) + self._yuv_bias[0]
        if (height, width) != tuple(rgb.shape[-2:]):
            y = resize(y.unsqueeze(1), (height, width)).squeeze(1)
            uv = resize(torch.einsum("ij,bjhw->bihw", self._to_yuv[1:], rgb), (height // 2, width // 2))
        else:
            uv = torch.einsum("ij,bjhw->bihw", self._to_yuv[1:], F.avg_pool2d(rgb, 2))
        uv = uv + self._yuv_bias[1:].view(1, 2, 1, 1)
        out_y, out_u, out_v = split_planes(out)
        out_y.copy_(y.round_().clamp_(0, 255))
        uv = uv.round_().clamp_(0, 255)
        out_u.copy_(uv[:, 0])
        out_v.copy_(uv[:, 1])
        return out


def resize(planes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) float -> (B, C, *size): bilinear, antialiased when shrinking (no aliasing from a
    large camera frame into a small model)."""
    return F.interpolate(planes, size=size, mode="bilinear", antialias=True, align_corners=False)


def yuv420p_to_rgb(frame: torch.Tensor) -> torch.Tensor:
    """One (H*3/2, W) uint8 yuv420p frame -> (3, H, W) float32 RGB in [0, 1]."""
    return Yuv420pConverter(frame.device).to_rgb(frame.unsqueeze(0))[0]


def rgb_to_yuv420p(rgb: torch.Tensor) -> torch.Tensor:
    """One (3, H, W) float RGB image in [0, 1] -> (H*3/2, W) uint8 yuv420p; H and W must be even."""
    return Yuv420pConverter(rgb.device).to_yuv(rgb.unsqueeze(0))[0]
