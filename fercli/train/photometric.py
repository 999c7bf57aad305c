"""Photometric and compression jitter of the train step (--photometric P): how a face photo
differs from a FER2013 image beyond its framing.

FER2013's faces share one pipeline (web images, grey, 48×48); the faces users bring come
through others: another exposure (contrast), another tone curve (gamma), a soft lens or a
downscaled video frame (blur), a JPEG encoder (block artefacts). Each of the four is applied
to an image independently with probability P, in that order (compression last, as in a
camera):

    x (B, 1, H, W) in [0, 1], after augment_with (fercli.data.resident)
      → contrast: (x − mean) · c + mean, c uniform in CONTRAST        (per image)
      → gamma:    x ** γ, γ log-uniform in GAMMA
      → blur:     Gaussian, σ uniform in BLUR_SIGMA px (BLUR_TAPS taps, separable)
      → JPEG:     8×8 DCT, IJG luminance table at quality q uniform in JPEG_QUALITY,
                  quantised and decoded to 8-bit grey (what an encoder at q does to a
                  grey image, in torch: no host round trip)

Like erase_with, every random number arrives as a tensor drawn once per epoch outside the
step (PHOTO_DRAWS per image), so the step stays one CUDA graph and a resumed run replays it.
Nothing here imports Typer or Rich.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

PHOTO_DRAWS = 8  # per image: (apply, amount) for contrast, gamma, blur and JPEG
CONTRAST = (0.5, 1.5)  # factor about the image's mean grey
GAMMA = (1 / 1.6, 1.6)  # exponent, drawn log-uniformly
BLUR_SIGMA = (0.4, 1.4)  # px at 48 px: a 2–6× downscale's softness
BLUR_TAPS = 7  # radius 3 ≥ 2σ for every σ drawn
JPEG_QUALITY = (10.0, 90.0)  # IJG quality: 10 is blocky, 90 nearly clean

# IJG's luminance quantisation table (ITU-T T.81, Annex K.1), row-major over (v, u).
JPEG_LUMA = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99],
], dtype=torch.float32)


def dct_matrix(n: int = 8) -> torch.Tensor:
    """The orthonormal DCT-II matrix D (n, n): coefficients = D @ block @ D.T."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d.float()


@lru_cache(maxsize=8)
def _constants(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(DCT matrix, luminance table) on `device`, made once: the train step calls jpeg_with
    every step, and a host-to-device copy there would be a sync per step (and, under a CUDA
    graph, a copy baked into the capture). The warm-up steps before a capture fill the cache."""
    return dct_matrix().to(device, dtype), JPEG_LUMA.to(device)


def jpeg_table(quality: torch.Tensor) -> torch.Tensor:
    """(B, 8, 8) quantisation steps at IJG quality q (B,) in [1, 100]: the table scaled by
    5000 / q below 50 and 200 − 2q from 50, (T·s + 50) // 100, at least 1 (libjpeg's
    jpeg_quality_scaling; the quality is rounded to an integer, as encoders take it)."""
    q = quality.round().clamp(1, 100)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q)  # (B,)
    table = _constants(quality.device, torch.float32)[1][None] * scale[:, None, None]
    return torch.floor((table + 50) / 100).clamp(min=1)


def jpeg_with(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """x (B, 1, H, W) in [0, 1] as grey JPEG at quality (B,) would decode it: level shift,
    8×8 DCT, divide by the table and round, multiply back, inverse DCT, round to 8 bits.
    Sides that are not multiples of 8 are padded by replication (as encoders pad the edge
    blocks) and cropped back."""
    b, _, h, w = x.shape
    ph, pw = -h % 8, -w % 8
    px = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
    hh, ww = h + ph, w + pw
    d = _constants(x.device, x.dtype)[0]
    blocks = (px.reshape(b, hh // 8, 8, ww // 8, 8).permute(0, 1, 3, 2, 4) * 255 - 128)  # (B, by, bx, 8, 8)
    coef = d @ blocks @ d.T
    step = jpeg_table(quality).to(x.dtype)[:, None, None]  # (B, 1, 1, 8, 8)
    coef = torch.round(coef / step) * step
    out = (d.T @ coef @ d + 128).round().clamp(0, 255) / 255
    out = out.permute(0, 1, 3, 2, 4).reshape(b, 1, hh, ww)
    return out[:, :, :h, :w]


def blur_with(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A separable Gaussian blur of x (B, 1, H, W) with each image's σ (B,) in px (edges
    replicated), as one grouped convolution per axis."""
    b, _, h, w = x.shape
    r = BLUR_TAPS // 2
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)  # (taps,)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None].to(x.dtype)) ** 2)
    k = k / k.sum(1, keepdim=True)  # (B, taps)
    y = F.pad(x.reshape(1, b, h, w), (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k.view(b, 1, 1, BLUR_TAPS), groups=b)  # along W
    y = F.conv2d(y, k.view(b, 1, BLUR_TAPS, 1), groups=b)  # along H
    return y.reshape(b, 1, h, w)


def photometric_with(x: torch.Tensor, r: torch.Tensor, p: float) -> torch.Tensor:
    """The four jitters with their draws given: x float (B, 1, H, W) in [0, 1]; r float32
    (B, PHOTO_DRAWS) uniform in [0, 1) = (apply, amount) × (contrast, gamma, blur, JPEG).
    Jitter j touches image b when r[b, 2j] < p; images it skips pass through unchanged
    (bit for bit: each result is chosen with torch.where)."""
    on = r[:, 0::2] < p  # (B, 4)
    amount = r[:, 1::2]  # (B, 4)

    def pick(j: int, jittered: torch.Tensor, plain: torch.Tensor) -> torch.Tensor:
        return torch.where(on[:, j].view(-1, 1, 1, 1), jittered, plain)

    c = CONTRAST[0] + amount[:, 0] * (CONTRAST[1] - CONTRAST[0])
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = pick(0, ((x - mean) * c.view(-1, 1, 1, 1).to(x.dtype) + mean).clamp(0, 1), x)
    lo, hi = math.log(GAMMA[0]), math.log(GAMMA[1])
    gamma = torch.exp(lo + amount[:, 1] * (hi - lo))
    x = pick(1, x.clamp_min(1e-6) ** gamma.view(-1, 1, 1, 1).to(x.dtype), x)
    sigma = BLUR_SIGMA[0] + amount[:, 2] * (BLUR_SIGMA[1] - BLUR_SIGMA[0])
    x = pick(2, blur_with(x, sigma), x)
    quality = JPEG_QUALITY[0] + amount[:, 3] * (JPEG_QUALITY[1] - JPEG_QUALITY[0])
    return pick(3, jpeg_with(x, quality), x)
