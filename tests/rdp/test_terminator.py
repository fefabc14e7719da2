"""Terminator backbone: shapes, 1-D mode, batch independence, gradients, slow loss, ablations, a tiny overfit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rdp.encoders import Terminator
from rdp.encoders.terminator import _fft_conv, _toeplitz_conv, depthwise_conv

TINY = dict(width=8, depth=2, slow_hidden=8, slow_layers=2, gate_order=2)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.mark.parametrize("hw", [(8, 8), (8, 13), (11, 9), (16, 16), (17, 20)])
def test_image_shapes(hw: tuple[int, int]) -> None:
    model = Terminator(in_channels=3, num_classes=5, **TINY)
    assert model(torch.randn(2, 3, *hw)).shape == (2, 5)


def test_feature_mode_returns_feature_dim() -> None:
    model = Terminator(in_channels=3, num_classes=None, **TINY)
    assert model(torch.randn(2, 3, 12, 10)).shape == (2, model.feature_dim)


def test_feature_map_is_forward_before_the_mean() -> None:
    model = Terminator(in_channels=3, num_classes=None, patch_size=4, **TINY).eval()
    x = torch.randn(2, 3, 32, 36)
    fmap = model.feature_map(x)
    assert fmap.shape == (2, model.feature_dim, 8, 9)
    torch.testing.assert_close(fmap.mean(dim=(2, 3)), model(x), rtol=0, atol=0)


def test_patchify_stem_on_camera_sized_image() -> None:
    model = Terminator(in_channels=3, num_classes=None, patch_size=4, **TINY)
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, model.feature_dim)


@pytest.mark.parametrize("length", [8, 64, 300])
def test_sequence_mode(length: int) -> None:
    model = Terminator(in_channels=1, num_classes=10, dims=1, **TINY)
    assert model(torch.randn(3, 1, length)).shape == (3, 10)


def test_wrong_input_layout_names_the_problem() -> None:
    model = Terminator(in_channels=3, num_classes=5, **TINY)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) with C=3"):
        model(torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="C=3"):
        model(torch.randn(2, 1, 8, 8))


@pytest.mark.parametrize("spatial", [(8, 8), (5, 11), (20,)])
@pytest.mark.parametrize("kernel", ["3", "7", "global"])
def test_depthwise_conv_routes_agree(spatial: tuple[int, ...], kernel: str) -> None:
    """Toeplitz matmul, FFT and direct conv are three routes to the same 'same' convolution."""
    shape = tuple(2 * n - 1 for n in spatial) if kernel == "global" else (int(kernel),) * len(spatial)
    z = torch.randn(2, 3, *spatial, dtype=torch.float64)
    k = torch.randn(3, *shape, dtype=torch.float64)
    conv = F.conv2d if len(spatial) == 2 else F.conv1d
    reference = conv(z, k.flip(tuple(range(1, k.ndim))).unsqueeze(1), padding=[n // 2 for n in shape], groups=3)
    torch.testing.assert_close(_toeplitz_conv(z, k), reference)
    torch.testing.assert_close(_fft_conv(z, k), reference)
    torch.testing.assert_close(depthwise_conv(z, k), reference)


@pytest.mark.parametrize("dims, shape", [(2, (9, 12)), (1, (40,))])
def test_sample_alone_equals_sample_in_batch(dims: int, shape: tuple[int, ...]) -> None:
    model = Terminator(in_channels=2, num_classes=4, dims=dims, **TINY).eval()
    batch = torch.randn(8, 2, *shape)
    with torch.no_grad():
        together = model(batch)
        alone = torch.cat([model(batch[i : i + 1]) for i in range(8)])
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=0)


def test_training_mode_is_batch_independent_too() -> None:
    """No batch statistics anywhere: even with gradients (another conv route for batches) a sample is alone."""
    model = Terminator(in_channels=1, num_classes=10, **TINY).train()
    batch = torch.randn(8, 1, 8, 8)
    together = model(batch)
    alone = torch.cat([model(batch[i : i + 1]) for i in range(8)])
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=0)


def test_every_parameter_gets_a_gradient() -> None:
    model = Terminator(in_channels=1, num_classes=10, **TINY)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    loss = F.cross_entropy(model(x), y) + model.slow_loss()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_slow_loss_is_a_differentiable_scalar() -> None:
    model = Terminator(in_channels=1, num_classes=10, depth=3, **{k: v for k, v in TINY.items() if k != "depth"})
    with pytest.raises(RuntimeError, match="forward"):
        model.slow_loss()
    model(torch.randn(2, 1, 8, 8))
    slow = model.slow_loss()
    assert slow.ndim == 0 and torch.isfinite(slow) and slow.requires_grad and slow > 0
    slow.backward()
    first_slow_net = model.blocks[0].hyper["local3"].slow_net
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in first_slow_net.parameters())
    # The feedback target (the last block's kernels) is held fixed: no slow-loss gradient reaches it.
    assert all(p.grad is None for p in model.blocks[-1].hyper["local3"].slow_net.parameters())


def test_slow_loss_disabled_is_exact_zero_and_keeps_structure() -> None:
    with_loss = Terminator(in_channels=1, num_classes=10, **TINY)
    without = Terminator(in_channels=1, num_classes=10, use_slow_loss=False, **TINY)
    without(torch.randn(2, 1, 8, 8))
    assert without.slow_loss().item() == 0.0 and not without.slow_loss().requires_grad
    assert [n for n, _ in with_loss.named_parameters()] == [n for n, _ in without.named_parameters()]


def test_global_branch_ablation_removes_the_branch() -> None:
    full = Terminator(in_channels=1, num_classes=10, **TINY)
    local_only = Terminator(in_channels=1, num_classes=10, use_global_branch=False, **TINY)
    assert "global" in full.blocks[0].hyper and "global" not in local_only.blocks[0].hyper
    assert sum(p.numel() for p in local_only.parameters()) < sum(p.numel() for p in full.parameters())
    assert local_only(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="at least one"):
        Terminator(in_channels=1, use_global_branch=False, local_kernel_sizes=())


def test_overfits_32_digits() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images[:32]).float().unsqueeze(1) / 8.0 - 1.0
    y = torch.from_numpy(digits.target[:32]).long()
    model = Terminator(in_channels=1, num_classes=10, **{**TINY, "width": 16})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        loss = F.cross_entropy(model(x), y) + model.slow_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], f"loss only went from {losses[0]:.3f} to {losses[-1]:.3f}"


def test_inference_kernel_cache_follows_weight_changes() -> None:
    model = Terminator(in_channels=1, num_classes=10, **TINY).eval()
    other = Terminator(in_channels=1, num_classes=10, **TINY).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        before = model(x)
        for p in model.blocks[0].hyper["global"].slow_net.parameters():
            p.mul_(1.5)  # an in-place update, like optimizer.step()
        cached = model(x)
    torch.testing.assert_close(cached, model(x))  # grad enabled: kernels regenerated from scratch
    assert not torch.allclose(before, cached)
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(x), other(x))
