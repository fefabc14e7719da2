"""NoiseScheduler: closed-form checks, and numbers matched against diffusers' DDPM/DDIM schedulers."""

from __future__ import annotations

import math

import pytest
import torch

from rdp.schedulers import NoiseScheduler, SchedulerConfig

ATOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def fake_model(x: torch.Tensor, t: int) -> torch.Tensor:
    """A fixed, deterministic 'noise predictor' that depends on the sample and the timestep."""
    return torch.tanh(0.7 * x + 0.01 * t) * 0.9 + 0.05 * math.cos(t)


# --------------------------------------------------------------------------------------------------- closed form


def test_cosine_schedule_closed_form() -> None:
    s = NoiseScheduler()
    N = 100
    abar = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    expected = [min(1 - abar((i + 1) / N) / abar(i / N), 0.999) for i in range(N)]
    torch.testing.assert_close(s.betas, torch.tensor(expected, dtype=torch.float64))
    assert s.betas[-1] == pytest.approx(0.999)  # the cap binds at the end
    # Uncapped, abar[t] telescopes to alpha_bar((t + 1) / N) / alpha_bar(0).
    for t in (0, 10, 50, 90):
        assert float(s.alphas_cumprod[t]) == pytest.approx(abar((t + 1) / N) / abar(0), rel=1e-12)
    assert torch.all(s.alphas_cumprod[1:] < s.alphas_cumprod[:-1])


def test_default_timesteps() -> None:
    s = NoiseScheduler()
    assert s.timesteps.tolist() == [84, 72, 60, 48, 36, 24, 12, 0]
    assert s.set_timesteps(10).tolist() == list(range(90, -1, -10))


def test_add_noise_closed_form_and_broadcast() -> None:
    s = NoiseScheduler()
    x0, noise = torch.randn(3, 8, 16), torch.randn(3, 8, 16)
    t = torch.tensor([0, 42, 99])
    out = s.add_noise(x0, noise, t)
    for i, ti in enumerate(t.tolist()):
        a = float(s.alphas_cumprod[ti])
        torch.testing.assert_close(out[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i])


def test_ddim_recovers_x0_given_the_true_noise() -> None:
    """With eps equal to the noise actually added, one DDIM step from t lands on the forward process at t_prev."""
    s = NoiseScheduler(SchedulerConfig(num_inference_steps=8))
    x0, noise = torch.randn(2, 8, 16, dtype=torch.float64), torch.randn(2, 8, 16, dtype=torch.float64)
    for t in s.timesteps.tolist():
        x_t = s.add_noise(x0, noise, torch.full((2,), t))
        x_prev = s.ddim_step(noise, t, x_t)
        if t - 12 >= 0:
            torch.testing.assert_close(x_prev, s.add_noise(x0, noise, torch.full((2,), t - 12)))
        else:
            torch.testing.assert_close(x_prev, x0)  # set_alpha_to_one: the last step returns x0_hat


def test_bad_inputs_raise() -> None:
    s = NoiseScheduler()
    x = torch.randn(2, 8, 16)
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 100\)"):
        s.add_noise(x, x, torch.tensor([0, 100]))
    with pytest.raises(ValueError, match=r"timesteps: expected shape \(2,\)"):
        s.add_noise(x, x, torch.tensor([1]))
    with pytest.raises(ValueError, match="eps shape"):
        s.ddim_step(x[:1], 84, x)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)
    with pytest.raises(ValueError, match="beta_schedule"):
        SchedulerConfig(beta_schedule="cosine")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------- vs diffusers


CONFIGS = [
    SchedulerConfig(),
    SchedulerConfig(num_inference_steps=16, clip_sample=True),
    SchedulerConfig(beta_schedule="linear", num_inference_steps=10, steps_offset=1, set_alpha_to_one=False),
]


def reference(cfg: SchedulerConfig) -> tuple[object, object]:
    """diffusers' DDPMScheduler and DDIMScheduler with cfg's settings; skips the test when diffusers is missing."""
    diffusers = pytest.importorskip(
        "diffusers", reason="diffusers not installed (pip install 'diffusers>=0.30'); reference comparison skipped"
    )
    common = dict(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        clip_sample=cfg.clip_sample,
        clip_sample_range=cfg.clip_sample_range,
        prediction_type="epsilon",
    )
    ddpm = diffusers.DDPMScheduler(**common, variance_type="fixed_small")
    ddim = diffusers.DDIMScheduler(
        **common, set_alpha_to_one=cfg.set_alpha_to_one, steps_offset=cfg.steps_offset, timestep_spacing="leading"
    )
    ddim.set_timesteps(cfg.num_inference_steps)
    return ddpm, ddim


@pytest.mark.parametrize("cfg", CONFIGS, ids=["cosine-8", "cosine-16-clip", "linear-10-offset"])
def test_tables_and_add_noise_match_diffusers(cfg: SchedulerConfig) -> None:
    ours = NoiseScheduler(cfg)
    ddpm, ddim = reference(cfg)
    torch.testing.assert_close(ours.betas.float(), ddpm.betas, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.alphas_cumprod.float(), ddpm.alphas_cumprod, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.alphas_cumprod.float(), ddim.alphas_cumprod, atol=ATOL, rtol=0)
    assert ours.timesteps.tolist() == ddim.timesteps.tolist()

    x0, noise = torch.randn(5, 8, 16), torch.randn(5, 8, 16)
    t = torch.tensor([0, 1, 37, 84, cfg.num_train_timesteps - 1])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), ddpm.add_noise(x0, noise, t), atol=ATOL, rtol=0)


@pytest.mark.parametrize("cfg", CONFIGS, ids=["cosine-8", "cosine-16-clip", "linear-10-offset"])
def test_ddim_trajectory_matches_diffusers(cfg: SchedulerConfig) -> None:
    ours = NoiseScheduler(cfg)
    _, ddim = reference(cfg)
    x_ours = x_ref = torch.randn(2, 8, 16)
    for t in ours.timesteps.tolist():
        x_ours = ours.ddim_step(fake_model(x_ours, t), t, x_ours)
        x_ref = ddim.step(fake_model(x_ref, t), t, x_ref, eta=0.0).prev_sample
        torch.testing.assert_close(x_ours, x_ref, atol=ATOL, rtol=0)


def test_stochastic_ddim_step_matches_diffusers_with_shared_noise() -> None:
    cfg = SchedulerConfig(eta=0.5)
    ours = NoiseScheduler(cfg)
    _, ddim = reference(cfg)
    x, noise = torch.randn(2, 8, 16), torch.randn(2, 8, 16)
    eps = fake_model(x, 48)
    expected = ddim.step(eps, 48, x, eta=0.5, variance_noise=noise).prev_sample
    torch.testing.assert_close(ours.ddim_step(eps, 48, x, noise=noise), expected, atol=ATOL, rtol=0)
