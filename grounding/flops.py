"""Counted prefill FLOPs of the grounding model, with ``torch.utils.flop_counter.FlopCounterMode``.

What is counted: matmuls (2 FLOPs per multiply-add), convolutions and attention (``4 * S_q * S_k * d`` per call).
Elementwise work (norms, activations, softmax, pooling, embedding lookups) is not. Two ops the counter does not know
are added here: PyTorch's CPU attention kernel (the counter only knows the GPU ones, so on CPU attention would count
as zero) and FFTs (the Terminator's global convolution), estimated as ``2.5 * n * log2(n)`` per real transform of
n points and ``5 * n * log2(n)`` per complex one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from grounding.model import FrameEncoder, GroundingModel

aten = torch.ops.aten


def _cpu_sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                    **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _fft_flops(real_shape: Any, dim: Any, per_point: float) -> int:
    n = math.prod(real_shape[d] for d in dim)
    signals = math.prod(real_shape) // max(n, 1)
    return int(signals * per_point * n * math.log2(max(n, 2)))


def _r2c_flops(x_shape: Any, dim: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return _fft_flops(x_shape, dim, 2.5)


def _c2r_flops(x_shape: Any, dim: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return _fft_flops(out_shape, dim, 2.5)


def _c2c_flops(x_shape: Any, dim: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return _fft_flops(x_shape, dim, 5.0)


EXTRA_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    aten._fft_r2c: _r2c_flops,
    aten._fft_c2r: _c2r_flops,
    aten._fft_c2c: _c2c_flops,
}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (run without gradients)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as counter:
        fn()
    return int(counter.get_total_flops())


def lm_prefill_flops(model: GroundingModel, num_frames: int, text_len: int, batch: int = 1) -> int:
    """FLOPs of one forward pass of the language-model part, given frame tokens (B, num_frames, N, C) and an
    instruction of ``text_len`` tokens ([CLS] included): everything after the frame encoder."""
    cfg = model.cfg
    frame_tokens = torch.randn(batch, num_frames, cfg.slots, cfg.visual_dim)
    text_ids = torch.randint(0, cfg.vocab_size, (batch, text_len))
    text_mask = torch.ones(batch, text_len, dtype=torch.bool)
    was_training = model.training
    model.eval()
    try:
        return count_flops(lambda: model(frame_tokens, text_ids, text_mask))
    finally:
        model.train(was_training)


def frame_encoder_flops(encoder: FrameEncoder, image_size: tuple[int, int] = (96, 96)) -> int:
    """FLOPs of the frame encoder on one frame (3, H, W): multiply by T for a video."""
    images = torch.zeros(1, 1, 3, *image_size)
    was_training = encoder.training
    encoder.eval()
    try:
        return count_flops(lambda: encoder(images))
    finally:
        encoder.train(was_training)
