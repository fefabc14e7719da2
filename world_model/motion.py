"""Camera ego-motion for the world model: how an action moves the image, estimated from the videos themselves.

A camera that moves by an action ``a`` shifts what it sees by about ``M a`` (a translation in the image, for a camera
looking at a roughly planar scene, as the wrist camera over a table does). The denoiser (``motion=warp``) is handed
the last clean context frame warped by ``M`` times the displacement since that frame, so it only has to fill in what
came into view; a denoiser without it has to learn to move content across pixels from attention alone, which the
small CPU model does not (docs/results.md).

``estimate_motion`` fits ``M`` (2 x action width, in ``grid_sample``'s normalised coordinates, so it serves every
resolution of the same view: frames and latents alike) by least squares on the best integer pixel shift between
consecutive frames; the denoiser starts from it and fine-tunes it with everything else.

Shapes: frames (N, S, S, 3) uint8; actions (N, Da); ``pairs`` (P,) indices i with frames i-1, i in one episode.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def best_shifts(prev: np.ndarray, nxt: np.ndarray, radius: int) -> np.ndarray:
    """(P, S, S) grey frames -> (P, 2) integer (dx, dy) pixel shifts s minimising the mean squared difference
    between ``nxt[p]`` and ``prev[p + s]`` over the part both frames see."""
    P, S, _ = prev.shape
    r = radius
    core = torch.from_numpy(nxt[:, r:S - r, r:S - r]).float()
    src = torch.from_numpy(prev).float()
    best = torch.full((P,), float("inf"))
    out = torch.zeros((P, 2), dtype=torch.long)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            moved = src[:, r + dy:S - r + dy, r + dx:S - r + dx]
            err = ((moved - core) ** 2).mean(dim=(1, 2))
            better = err < best
            best = torch.where(better, err, best)
            out[better] = torch.tensor([dx, dy])
    return out.numpy()


def estimate_motion(frames: np.ndarray, actions: np.ndarray, pairs: np.ndarray, radius: int = 6,
                    max_pairs: int = 4000, seed: int = 0) -> np.ndarray:
    """The (2, Da) map from an action to the image shift it causes, in normalised image coordinates (the sample
    offset of ``grid_sample``: the new frame at p shows the old frame at p + M a). Pairs whose action is zero are
    skipped; at most ``max_pairs`` are used."""
    moving = pairs[np.abs(actions[pairs]).sum(axis=1) > 0]
    if len(moving) < actions.shape[1]:
        raise ValueError(f"{len(moving)} frame pairs with a non-zero action: too few to estimate the camera's motion")
    if len(moving) > max_pairs:
        moving = np.sort(np.random.default_rng(seed).choice(moving, size=max_pairs, replace=False))
    grey = frames.astype(np.float32).mean(axis=-1) / 255.0
    S = grey.shape[-1]
    if S <= 2 * radius + 2:
        raise ValueError(f"frames of {S} px are too small for shifts up to {radius} px")
    shifts = best_shifts(grey[moving - 1], grey[moving], radius).astype(np.float64) * 2.0 / S  # normalised
    a = actions[moving].astype(np.float64)
    m, *_ = np.linalg.lstsq(a, shifts, rcond=None)  # (Da, 2)
    return m.T.astype(np.float32)


def warp(frames: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """frames (N, C, h, w), shift (N, 2) normalised (x, y) -> (the frames resampled at p + shift, (N, 1, h, w) the
    share of each output pixel that came from inside the frame: 0 where the shift brought in unseen ground)."""
    N, _, h, w = frames.shape
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=frames.device)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=frames.device)
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
    grid = base[None] + shift[:, None, None, :]
    moved = F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = F.grid_sample(torch.ones((N, 1, h, w), device=frames.device), grid, mode="bilinear",
                           padding_mode="zeros", align_corners=False)
    return moved, inside
