"""ConditionalUnet1D: shapes over sequence lengths and dims, FiLM conditioning, batch independence, errors."""

from __future__ import annotations

import pytest
import torch

from rdp.unet1d import ConditionalUnet1D, SinusoidalEmbedding


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def tiny_unet(input_dim: int, cond_dim: int, down_dims: tuple[int, ...] = (16, 32, 64)) -> ConditionalUnet1D:
    return ConditionalUnet1D(input_dim, cond_dim, down_dims=down_dims, diffusion_step_embed_dim=16).eval()


@pytest.mark.parametrize("T", [8, 16, 32])
@pytest.mark.parametrize("D, G", [(2, 5), (16, 40), (10, 1)])
def test_output_shape(T: int, D: int, G: int) -> None:
    unet = tiny_unet(D, G)
    out = unet(torch.randn(3, T, D), torch.tensor([0, 50, 99]), torch.randn(3, G))
    assert out.shape == (3, T, D)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("T", [1, 3, 5, 10, 33])
@pytest.mark.parametrize("down_dims", [(16,), (16, 32), (16, 32, 64, 128)])
def test_lengths_that_do_not_divide_are_padded(T: int, down_dims: tuple[int, ...]) -> None:
    unet = tiny_unet(4, 6, down_dims)
    assert unet(torch.randn(2, T, 4), 7, torch.randn(2, 6)).shape == (2, T, 4)


def test_default_sizes_latent_and_action_chunks() -> None:
    latent = ConditionalUnet1D(16, 300)  # (64, 128, 256), the LDP's denoiser
    action = ConditionalUnet1D(10, 300)
    with torch.no_grad():
        assert latent(torch.randn(1, 8, 16), 3, torch.randn(1, 300)).shape == (1, 8, 16)
        assert action(torch.randn(1, 32, 10), 3, torch.randn(1, 300)).shape == (1, 32, 10)


def test_film_conditions_on_global_cond_and_timestep() -> None:
    unet = tiny_unet(3, 8)
    x = torch.randn(1, 16, 3).expand(2, 16, 3)
    cond = torch.randn(2, 8)
    with torch.no_grad():
        out = unet(x, torch.tensor([10, 10]), cond)
        same_cond = unet(x, torch.tensor([10, 10]), cond[:1].expand(2, 8))
        other_step = unet(x, torch.tensor([10, 80]), cond)
    assert (out[0] - out[1]).abs().max() > 1e-3  # same sample, different observation
    assert torch.allclose(same_cond[0], same_cond[1], atol=1e-6)
    assert (other_step[1] - out[1]).abs().max() > 1e-3  # same sample and observation, different noise level
    # every residual block reads the condition: each FiLM layer gets a gradient
    unet(x, torch.tensor([10, 80]), cond).square().sum().backward()
    films = [m.film for m in unet.modules() if hasattr(m, "film")]
    assert len(films) == 2 * 3 + 2 + 2 * 2  # down, mid, up
    assert all(f.weight.grad is not None and f.weight.grad.abs().sum() > 0 for f in films)


def test_scalar_and_vector_timesteps_agree() -> None:
    unet = tiny_unet(2, 4)
    x, cond = torch.randn(3, 8, 2), torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(unet(x, 42, cond), unet(x, torch.full((3,), 42), cond))
        torch.testing.assert_close(unet(x, torch.tensor(42), cond), unet(x, torch.full((3,), 42), cond))


def test_sample_is_independent_of_its_batch() -> None:
    unet = tiny_unet(4, 6)
    x, cond, steps = torch.randn(4, 8, 4), torch.randn(4, 6), torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        torch.testing.assert_close(unet(x[1:2], steps[1:2], cond[1:2]), unet(x, steps, cond)[1:2], atol=1e-5, rtol=0)


def test_without_global_cond() -> None:
    unet = tiny_unet(2, 0)
    assert unet(torch.randn(2, 8, 2), 5).shape == (2, 8, 2)
    with pytest.raises(ValueError, match="global_cond_dim=0"):
        unet(torch.randn(2, 8, 2), 5, torch.randn(2, 3))


def test_errors_name_the_bad_input() -> None:
    unet = tiny_unet(3, 5)
    with pytest.raises(ValueError, match=r"sample: expected shape \(B, T, 3\), got \(2, 8, 4\)"):
        unet(torch.randn(2, 8, 4), 1, torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"global_cond: expected shape \(2, 5\), got \(2, 6\)"):
        unet(torch.randn(2, 8, 3), 1, torch.randn(2, 6))
    with pytest.raises(ValueError, match=r"global_cond: expected shape \(2, 5\), got None"):
        unet(torch.randn(2, 8, 3), 1)
    with pytest.raises(ValueError, match=r"timestep: expected a scalar or shape \(2,\)"):
        unet(torch.randn(2, 8, 3), torch.tensor([1, 2, 3]), torch.randn(2, 5))
    with pytest.raises(ValueError, match="multiples of n_groups=8"):
        ConditionalUnet1D(3, 5, down_dims=(12, 24))
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        ConditionalUnet1D(3, 5, kernel_size=4)


def test_sinusoidal_embedding() -> None:
    emb = SinusoidalEmbedding(16)(torch.tensor([0, 1, 99]))
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb[0], torch.cat([torch.zeros(8), torch.ones(8)]))
    with pytest.raises(ValueError, match="even"):
        SinusoidalEmbedding(7)
