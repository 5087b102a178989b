"""Image similarity for the svg verifier, on whole batches with torch (a GPU when there is one).

Every metric compares two RGB images of the same size (on white) and lies in [0, 1]:

- `pixel`: RLRF's reconstruction term (Rodriguez et al., "Rendering-Aware Reinforcement
  Learning for Vector Graphics Generation", 2025): each image's channels normalised to zero
  mean and unit variance, then `1 - ||a - b||_2 / sqrt(N)` over the N values, clipped to [0, 1]
  (RLRF clips to [-1, 1]; a reward here is never negative). A channel of one colour has no
  variance and normalises to zeros; when both images are of one colour in every channel, the
  plain `1 - ||a - b||_2 / sqrt(N)` on [0, 1] values is used instead, so that two different
  plain colours do not count as equal.
- `ssim`: the structural similarity of Wang et al. (2004): Gaussian window 11, sigma 1.5,
  K1 = 0.01, K2 = 0.03, data range 1, valid windows only, per channel then averaged (so that
  a recoloured shape loses, which the `pixel` term's normalisation does not see), then
  rescaled so that a blank white canvas scores 0: `max(0, (s - s0) / (1 - s0))` with s0 the
  SSIM of white against the target. Raw SSIM pays an icon's empty background (70 to 80 % of
  a 24 px icon) to an empty answer; `ssim_raw` in `details` is the unscaled value.
  Hand-written (the paper's formula in 15 lines) rather than torchmetrics', which would bring
  lightning-utilities and a second torch version floor for one function, and could not give
  the blank canvas's score from the same filtered planes.
- `edge`: the `pixel` formula on Sobel gradient magnitudes of the grey images (RLRF applies its
  reconstruction term to edge maps too); 0 when either image has no edge at all, 1 when neither
  has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

METRICS = ("pixel", "ssim", "edge")
_EPS = 1e-6


def _band(n: int, device: torch.device) -> torch.Tensor:
    """The (n - 10, n) matrix that applies the 11-tap Gaussian (sigma 1.5) along one axis,
    valid windows only: the filter as two matrix products, which BLAS (or a GPU) does far
    faster than a grouped convolution of small kernels on a CPU."""
    coords = torch.arange(11, dtype=torch.float32, device=device) - 5
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = g / g.sum()
    band = torch.zeros(n - 10, n, device=device)
    rows = torch.arange(n - 10, device=device)
    for k in range(11):
        band[rows, rows + k] = g[k]
    return band


def grey(x: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R BT.601 weights) of (B, 3, H, W) images, (B, H, W)."""
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device)
    return torch.einsum("bchw,c->bhw", x, weights)


def ssim(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM per image of two batches (B, C, H, W) in [0, 1], each channel on its own then
    averaged; and the SSIM that a blank white canvas would get against `b`."""
    n, c, h, w = a.shape
    rows, cols = _band(h, a.device), _band(w, a.device)
    planes = torch.cat([a, b, a * a, b * b, a * b], 1)  # (B, 5C, H, W)
    mu_a, mu_b, aa, bb, ab = (rows @ planes @ cols.T).chunk(5, dim=1)
    c1, c2 = 0.01**2, 0.03**2
    var_a, var_b, cov = aa - mu_a**2, bb - mu_b**2, ab - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    score = (num / den).mean(dim=(1, 2, 3)).clamp(0, 1)
    # White: mean 1, no variance, no covariance.
    blank = ((2 * mu_b + c1) * c2) / ((1 + mu_b**2 + c1) * (var_b + c2))
    return score, blank.mean(dim=(1, 2, 3)).clamp(0, 1)


def above_blank(score: torch.Tensor, blank: torch.Tensor) -> torch.Tensor:
    """`score` rescaled so that what a blank canvas gets is 0 and a perfect match 1."""
    room = 1 - blank
    rescaled = (score - blank) / room.clamp_min(1e-6)
    return torch.where(room > 1e-6, rescaled.clamp(0, 1), score)


def _normalised_distance(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RLRF's `1 - ||norm(a) - norm(b)|| / sqrt(N)` per image of (B, C, H, W) batches, and
    whether both images were flat (no variance in any channel).

    From each channel's moments rather than normalised copies: with z-scores, sum(na^2) = n
    for a channel with variance (0 without) and sum(na * nb) = n * correlation, so
    ||na - nb||^2 = n * (ka + kb - 2 * ka * kb * correlation), ka, kb in {0, 1}."""
    n = a.shape[2] * a.shape[3]
    ca = a.flatten(2) - a.flatten(2).mean(2, keepdim=True)  # centred first: float32 suffices
    cb = b.flatten(2) - b.flatten(2).mean(2, keepdim=True)
    var_a, var_b = (ca * ca).mean(2), (cb * cb).mean(2)
    cov = (ca * cb).mean(2)
    ka, kb = var_a > _EPS**2, var_b > _EPS**2
    corr = cov / (var_a.clamp_min(_EPS**2) * var_b.clamp_min(_EPS**2)).sqrt()
    squared = n * (ka.float() + kb.float() - 2 * (ka & kb).float() * corr)
    total = a.shape[1] * n
    score = 1 - squared.sum(1).clamp_min(0).sqrt() / math.sqrt(total)
    flat = ~(ka.any(1) | kb.any(1))
    return score.clamp(0, 1), flat


def pixel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    score, flat = _normalised_distance(a, b)
    plain = 1 - torch.linalg.vector_norm((a - b).flatten(1), dim=1) / math.sqrt(a[0].numel())
    return torch.where(flat, plain.clamp(0, 1), score)


def edges(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the grey images, (B, 1, H-2, W-2); by slicing, which is
    faster on a CPU than a 3 x 3 convolution."""
    p = grey(x)
    gx = (
        (p[:, :-2, 2:] - p[:, :-2, :-2])
        + 2 * (p[:, 1:-1, 2:] - p[:, 1:-1, :-2])
        + (p[:, 2:, 2:] - p[:, 2:, :-2])
    )
    gy = (
        (p[:, 2:, :-2] - p[:, :-2, :-2])
        + 2 * (p[:, 2:, 1:-1] - p[:, :-2, 1:-1])
        + (p[:, 2:, 2:] - p[:, :-2, 2:])
    )
    return torch.sqrt(gx * gx + gy * gy + 1e-12).unsqueeze(1)


def edge(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    score, flat = _normalised_distance(edges(a), edges(b))
    return torch.where(flat, torch.ones_like(score), score)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_float(images: Sequence[torch.Tensor], on: torch.device) -> torch.Tensor:
    """(B, 3, H, W) float32 in [0, 1] from uint8 (H, W, 3) images."""
    batch = torch.stack([im.to(on, non_blocking=True) for im in images])
    return batch.permute(0, 3, 1, 2).float() / 255.0


CHUNK = 8
"""Pairs compared at once inside a batch at 256 px: enough for BLAS to run at full speed, and
the filtered planes (about 20 MB a pair at 256 px) stay small. Larger images go fewer at a time
(the same pixels: 2 pairs at 512 px, 1 at 1024), so that a batch of big ones holds no more."""


@torch.inference_mode()
def compare(
    renders: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    on: torch.device | None = None,
) -> list[dict[str, float]]:
    """Every metric for each (render, target) pair; images uint8 (H, W, 3), one size per call."""
    on = on or device()
    out: list[dict[str, float]] = []
    pixels = renders[0].shape[0] * renders[0].shape[1] if renders else 1
    chunk = max(1, CHUNK * 256 * 256 // pixels)
    for start in range(0, len(renders), chunk):
        a = to_float(renders[start : start + chunk], on)
        b = to_float(targets[start : start + chunk], on)
        structural, blank = ssim(a, b)
        scores = {
            "pixel": pixel(a, b),
            "ssim": above_blank(structural, blank),
            "edge": edge(a, b),
            "ssim_raw": structural,
            "flat": (a.flatten(2).amax(2) - a.flatten(2).amin(2)).amax(1) == 0,
            "flat_target": (b.flatten(2).amax(2) - b.flatten(2).amin(2)).amax(1) == 0,
        }
        table = {k: v.float().cpu().tolist() for k, v in scores.items()}
        out += [{k: float(v[i]) for k, v in table.items()} for i in range(a.shape[0])]
    return out


def difference(render: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A grey picture of where two uint8 (H, W, 3) images differ: white where equal."""
    diff = (render.int() - target.int()).abs().amax(dim=2)
    return (255 - diff).to(torch.uint8)
