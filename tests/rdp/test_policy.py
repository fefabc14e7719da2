"""DiffusionPolicy and Normalizer: shape contract, training signal, DDIM prediction, checkpoints."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from rdp.checkpoint import CheckpointError
from rdp.normalizer import Normalizer
from rdp.policy import DiffusionPolicy, DiffusionPolicyConfig


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def lowdim_config(**overrides: object) -> DiffusionPolicyConfig:
    """Tiny low-dim-only action policy (the vanilla DP baseline at toy size)."""
    base = dict(
        target="action", horizon=8, action_dim=2, lowdim_keys=("proprio", "wrench"), lowdim_dims=(3, 6),
        image_keys=(), encoder="none", down_dims=(32, 64), diffusion_step_embed_dim=32,
    )
    return DiffusionPolicyConfig(**{**base, **overrides})


def lowdim_obs(cfg: DiffusionPolicyConfig, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dims = zip(cfg.lowdim_keys, cfg.lowdim_dims, strict=True)
    return {key: torch.randn(batch, cfg.obs_steps, dim, generator=g) for key, dim in dims}


def fitted_policy(cfg: DiffusionPolicyConfig) -> DiffusionPolicy:
    policy = DiffusionPolicy(cfg)
    obs = lowdim_obs(cfg, 16, seed=1)
    policy.fit_normalizer(obs, torch.randn(16, *cfg.target_shape) * 3 + 1)
    return policy


# --------------------------------------------------------------------------------------------------- normaliser


@pytest.mark.parametrize("mode", ["minmax", "meanstd"])
def test_normalizer_round_trip(mode: str) -> None:
    data = np.random.default_rng(0).normal([0, 5, -3], [1, 10, 0.1], size=(200, 4, 3))
    norm = Normalizer({"proprio": 3})
    assert norm.fit("proprio", data, mode) == []
    x = torch.as_tensor(data, dtype=torch.float32)
    y = norm.normalize("proprio", x)
    torch.testing.assert_close(norm.unnormalize("proprio", y), x, atol=1e-4, rtol=1e-5)
    flat = y.reshape(-1, 3)
    if mode == "minmax":
        torch.testing.assert_close(flat.min(0).values, -torch.ones(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(flat.max(0).values, torch.ones(3), atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(flat.mean(0), torch.zeros(3), atol=1e-4, rtol=0)
        torch.testing.assert_close(flat.std(0, correction=0), torch.ones(3), atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", ["minmax", "meanstd"])
def test_normalizer_constant_dims_are_centred_not_scaled(mode: str) -> None:
    data = np.stack([np.linspace(-2, 2, 50), np.full(50, 7.0), 7.0 + 1e-6 * np.arange(50)], axis=-1)
    norm = Normalizer({"wrench": 3})
    assert norm.fit("wrench", data, mode) == [1, 2]
    y = norm.normalize("wrench", torch.tensor([[0.0, 7.0, 7.5]]))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[0, 1:], torch.tensor([0.0, 0.5]), atol=1e-4, rtol=0)  # centred, not scaled


@pytest.mark.parametrize("mode", ["minmax", "meanstd"])
def test_normalizer_min_range_keeps_nearly_constant_dims_from_exploding(mode: str) -> None:
    # A tool held at one orientation: its rotation features barely move in the demonstrations.
    rng = np.random.default_rng(0)
    data = np.stack([rng.uniform(-0.2, 0.2, 500), -1.0 + rng.uniform(-2e-4, 2e-4, 500)], axis=-1)
    plain, floored = Normalizer({"proprio": 2}), Normalizer({"proprio": 2})
    plain.fit("proprio", data, mode)
    floored.fit("proprio", data, mode, min_range=0.05)
    live = torch.tensor([[0.1, -1.0 + 4e-3]])  # 0.2 degree off the demonstrated orientation
    assert abs(float(plain.normalize("proprio", live)[0, 1])) > 10  # what the policy saw before
    assert abs(float(floored.normalize("proprio", live)[0, 1])) < 0.2
    torch.testing.assert_close(floored.normalize("proprio", live)[0, 0], plain.normalize("proprio", live)[0, 0])
    torch.testing.assert_close(floored.unnormalize("proprio", floored.normalize("proprio", live)), live)
    with pytest.raises(ValueError, match="min_range"):
        floored.fit("proprio", data, mode, min_range=-1.0)


def test_normalizer_errors() -> None:
    norm = Normalizer({"proprio": 3})
    with pytest.raises(RuntimeError, match="'proprio' was never fitted"):
        norm.normalize("proprio", torch.zeros(3))
    with pytest.raises(KeyError, match="no key 'tactile'.*known keys: \\['proprio'\\]"):
        norm.fit("tactile", np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"expected data of shape \(\.\.\., 3\), got \(4, 2\)"):
        norm.fit("proprio", np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN or inf"):
        norm.fit("proprio", np.array([[0.0, np.nan, 1.0]]))
    with pytest.raises(ValueError, match="mode must be"):
        norm.fit("proprio", np.zeros((4, 3)), "robust")  # type: ignore[arg-type]
    norm.fit("proprio", np.random.default_rng(0).normal(size=(10, 3)))
    with pytest.raises(KeyError, match="no key 'action'"):
        norm.unnormalize("action", torch.zeros(3))
    with pytest.raises(ValueError, match=r"normalise 'proprio': expected shape \(\.\.\., 3\), got \(2, 4\)"):
        norm.normalize("proprio", torch.zeros(2, 4))
    with pytest.raises(ValueError, match="identifier"):
        Normalizer({"a.b": 1})


def test_normalizer_arrays_round_trip_and_check_shapes() -> None:
    norm = Normalizer({"action": 2, "proprio": 3})
    with pytest.raises(RuntimeError, match=r"\['action', 'proprio'\] were never fitted"):
        norm.arrays()
    norm.fit("action", np.random.default_rng(0).normal(size=(10, 2)))
    norm.fit("proprio", np.random.default_rng(1).normal(size=(10, 3)), "meanstd")
    arrays = norm.arrays()
    assert sorted(arrays) == ["action.offset", "action.scale", "proprio.offset", "proprio.scale"]
    other = Normalizer({"action": 2, "proprio": 3})
    other.load_arrays(arrays)
    x = torch.randn(5, 3)
    torch.testing.assert_close(other.normalize("proprio", x), norm.normalize("proprio", x))
    bad = {**arrays, "proprio.scale": torch.ones(4)}
    with pytest.raises(CheckpointError, match=r"normalizer.proprio.scale \[4\], model expects \[3\]"):
        Normalizer({"action": 2, "proprio": 3}).load_arrays(bad)


# --------------------------------------------------------------------------------------------------- config


def test_config_json_round_trip_and_validation() -> None:
    cfg = DiffusionPolicyConfig()
    assert cfg.target_shape == (8, 16)
    assert lowdim_config().target_shape == (8, 2)
    assert DiffusionPolicyConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
    with pytest.raises(ValueError, match="unknown fields \\['horizonn'\\]"):
        DiffusionPolicyConfig.from_dict({"horizonn": 3})
    with pytest.raises(ValueError, match="target must be"):
        DiffusionPolicyConfig(target="actions")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="need an image encoder"):
        DiffusionPolicyConfig(encoder="none")
    with pytest.raises(ValueError, match="pair up"):
        DiffusionPolicyConfig(lowdim_keys=("proprio",), lowdim_dims=(3, 4))
    with pytest.raises(ValueError, match="num_inference_steps"):
        DiffusionPolicyConfig(num_inference_steps=101)


# --------------------------------------------------------------------------------------------------- shapes


def test_lowdim_policy_loss_and_predict_shapes() -> None:
    cfg = lowdim_config()
    policy = fitted_policy(cfg)
    obs = lowdim_obs(cfg, 3)
    loss = policy.compute_loss({"obs": obs, "action": torch.randn(3, 8, 2)})
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in policy.model.parameters())
    assert policy.eval().predict(obs).shape == (3, 8, 2)
    assert policy.predict(obs, num_inference_steps=1).shape == (3, 8, 2)


def test_noise_scale_is_a_sampling_temperature() -> None:
    policy = fitted_policy(lowdim_config()).eval()
    obs = lowdim_obs(lowdim_config(), 2)

    def plan(seed: int, scale: float) -> torch.Tensor:
        return policy.predict(obs, generator=torch.Generator().manual_seed(seed), noise_scale=scale)

    assert torch.equal(plan(0, 1.0), policy.predict(obs, generator=torch.Generator().manual_seed(0)))  # the default
    assert not torch.allclose(plan(0, 1.0), plan(1, 1.0))
    assert torch.equal(plan(0, 0.0), plan(1, 0.0))  # no noise: one plan whatever the generator
    with pytest.raises(ValueError, match="noise_scale"):
        plan(0, -0.5)


def test_wrong_observation_shapes_name_key_expected_and_got() -> None:
    cfg = lowdim_config()
    policy = fitted_policy(cfg).eval()
    obs = lowdim_obs(cfg, 2)
    with pytest.raises(ValueError, match=r"obs\['wrench'\]: expected shape \(B, 2, 6\) = \(2, 2, 6\), got \(2, 2, 5\)"):
        policy.predict({**obs, "wrench": torch.zeros(2, 2, 5)})
    with pytest.raises(ValueError, match=r"obs\['proprio'\]: expected shape \(B, 2, 3\) = \(2, 2, 3\), got \(2, 1, 3"):
        policy.predict({**obs, "proprio": torch.zeros(2, 1, 3)})
    with pytest.raises(ValueError, match=r"obs\['wrench'\]: expected .* = \(2, 2, 6\), got \(3, 2, 6\)"):
        policy.predict({**obs, "wrench": torch.zeros(3, 2, 6)})  # batch sizes disagree
    with pytest.raises(ValueError, match="obs is missing key 'wrench'"):
        policy.predict({"proprio": obs["proprio"]})
    with pytest.raises(ValueError, match=r"batch\['action'\]: expected shape \(2, 8, 2\), got \(2, 32, 2\)"):
        policy.compute_loss({"obs": obs, "action": torch.zeros(2, 32, 2)})
    with pytest.raises(ValueError, match="batch needs keys 'obs' and 'action'"):
        policy.compute_loss({"obs": obs, "latent": torch.zeros(2, 8, 2)})


def test_image_path_with_two_obs_steps_of_96x96() -> None:
    cfg = DiffusionPolicyConfig(
        image_keys=("cam_front",), lowdim_keys=("proprio",), lowdim_dims=(4,), encoder_width=8,
        down_dims=(16, 32), diffusion_step_embed_dim=16,
    )
    policy = DiffusionPolicy(cfg)
    g = torch.Generator().manual_seed(0)
    obs = {"proprio": torch.randn(2, 2, 4, generator=g), "cam_front": torch.rand(2, 2, 3, 96, 96, generator=g)}
    policy.fit_normalizer({"proprio": obs["proprio"]}, torch.randn(10, 8, 16, generator=g))
    assert policy.obs_encoder.output_dim == 2 * (32 + 4)
    policy.compute_loss({"obs": obs, "latent": torch.randn(2, 8, 16, generator=g)}).backward()
    stem = policy.obs_encoder.cameras["cam_front"].stem[0].weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0  # the camera encoder is trained end to end
    policy.eval()
    chunk = policy.predict(obs, generator=torch.Generator().manual_seed(3))
    assert chunk.shape == (2, 8, 16)
    as_uint8 = {**obs, "cam_front": (obs["cam_front"] * 255).round().to(torch.uint8)}
    rounded = {**obs, "cam_front": as_uint8["cam_front"].float() / 255}
    torch.testing.assert_close(
        policy.predict(as_uint8, generator=torch.Generator().manual_seed(3)),
        policy.predict(rounded, generator=torch.Generator().manual_seed(3)),
    )
    with pytest.raises(ValueError, match=r"obs\['cam_front'\]: expected shape \(B, 2, 3, 96, 96\) = "
                       r"\(2, 2, 3, 96, 96\), got \(2, 2, 3, 64, 64\)"):
        policy.predict({**obs, "cam_front": torch.rand(2, 2, 3, 64, 64)})


def test_terminator_encoder_trains_with_its_slow_loss() -> None:
    cfg = DiffusionPolicyConfig(
        target="action", horizon=8, image_keys=("cam",), image_size=(32, 32), lowdim_keys=(), lowdim_dims=(),
        encoder="terminator", encoder_width=8, down_dims=(16, 32), diffusion_step_embed_dim=16,
    )
    policy = DiffusionPolicy(cfg)
    policy.fit_normalizer({}, torch.randn(10, 8, 10))
    obs = {"cam": torch.rand(2, 2, 3, 32, 32)}
    policy.compute_loss({"obs": obs, "action": torch.randn(2, 8, 10)}).backward()
    assert policy.eval().predict(obs).shape == (2, 8, 10)


# --------------------------------------------------------------------------------------------------- learning


def test_tiny_policy_overfits_two_samples() -> None:
    """DDPM training then 8-step DDIM recovers both chunks from their observations (normalised units).

    Measured: mean abs error 0.17 after 300 steps, 0.058 after 600 and 0.022 after 1000 (16 noise seeds).
    """
    torch.manual_seed(0)
    cfg = lowdim_config(lowdim_keys=("proprio",), lowdim_dims=(3,))
    policy = DiffusionPolicy(cfg)
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(2, 2, 3, generator=g)
    t = torch.linspace(0, 1, 8)
    actions = torch.stack([torch.stack([torch.sin(3 * t), t], -1), torch.stack([-t, torch.cos(2 * t)], -1)])
    policy.fit_normalizer({"proprio": obs}, actions)
    steps, repeats = 600, 8
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    batch = {"obs": {"proprio": obs.repeat(repeats, 1, 1)}, "action": actions.repeat(repeats, 1, 1)}
    for _ in range(steps):
        loss = policy.compute_loss(batch, generator=g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    assert loss.item() < 0.1

    policy.eval()
    pred = policy.predict({"proprio": obs.repeat(8, 1, 1)}, generator=torch.Generator().manual_seed(1))  # (16, 8, 2)
    normalized = policy.normalizer.normalize("action", pred)
    per_chunk = (normalized - policy.normalizer.normalize("action", actions.repeat(8, 1, 1))).abs().mean(dim=(1, 2))
    assert per_chunk.mean() < 0.1, per_chunk
    assert per_chunk.max() < 0.4, per_chunk
    # each prediction is nearer its own target than the other sample's: the observation picks the chunk
    other = policy.normalizer.normalize("action", actions.flip(0).repeat(8, 1, 1))
    wrong = (normalized - other).abs().mean(dim=(1, 2))
    assert (per_chunk < wrong).all()


# --------------------------------------------------------------------------------------------------- checkpoints


def test_save_load_predicts_identically(tmp_path: Path) -> None:
    cfg = lowdim_config()
    policy = fitted_policy(cfg).eval()
    obs = lowdim_obs(cfg, 2)
    expected = policy.predict(obs, generator=torch.Generator().manual_seed(5))
    policy.save(tmp_path / "ckpt")

    stored = safetensors.torch.load_file(tmp_path / "ckpt" / "model.safetensors")
    assert {"normalizer.action.scale", "normalizer.proprio.offset", "normalizer.wrench.scale"} <= stored.keys()
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["model"] == "DiffusionPolicy"

    loaded = DiffusionPolicy.from_checkpoint(tmp_path / "ckpt").eval()
    assert loaded.cfg == cfg
    torch.testing.assert_close(loaded.predict(obs, generator=torch.Generator().manual_seed(5)), expected)
    into = DiffusionPolicy(cfg).eval()
    into.load(tmp_path / "ckpt")
    torch.testing.assert_close(into.predict(obs, generator=torch.Generator().manual_seed(5)), expected)
    x = torch.randn(4, 3)
    torch.testing.assert_close(into.normalizer.normalize("proprio", x), policy.normalizer.normalize("proprio", x))


def test_save_refuses_unfitted_normalizer(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="never fitted"):
        DiffusionPolicy(lowdim_config()).save(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "config.json").exists()


# rdp.checkpoint names one mismatching tensor with both shapes, e.g.
# "checkpoint has model.head.1.weight [2, 32, 1], model expects [3, 32, 1]"
SHAPE_ERROR = r"checkpoint has (\S+) \[([\d, ]+)\], model expects \[([\d, ]+)\]"


def test_load_with_different_shapes_names_both(tmp_path: Path) -> None:
    saved = fitted_policy(lowdim_config())
    saved.save(tmp_path / "ckpt")
    for other_cfg in (lowdim_config(action_dim=3), lowdim_config(down_dims=(8, 64))):
        other = DiffusionPolicy(other_cfg)
        before = {k: v.clone() for k, v in other.state_dict().items()}
        with pytest.raises(CheckpointError, match=SHAPE_ERROR) as err:
            other.load(tmp_path / "ckpt")
        name, got, want = re.fullmatch(SHAPE_ERROR, str(err.value)).groups()
        assert got == ", ".join(map(str, saved.state_dict()[name].shape))
        assert want == ", ".join(map(str, before[name].shape)) and got != want
        assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())  # untouched


def test_load_refuses_same_shapes_with_different_meaning(tmp_path: Path) -> None:
    fitted_policy(lowdim_config(lowdim_keys=("proprio", "tactile"), lowdim_dims=(3, 3))).save(tmp_path / "ckpt")
    swapped = DiffusionPolicy(lowdim_config(lowdim_keys=("tactile", "proprio"), lowdim_dims=(3, 3)))
    with pytest.raises(CheckpointError, match=r"lowdim_keys: checkpoint \('proprio', 'tactile'\), model"):
        swapped.load(tmp_path / "ckpt")


# --------------------------------------------------------------------------------------------------- inpainting


def test_rtc_weights_freeze_then_decay_to_zero() -> None:
    from rdp.policy import rtc_weights

    w = rtc_weights(horizon=12, frozen=2, overlap=8)
    assert w[:2].tolist() == [1.0, 1.0] and (w[8:] == 0).all()
    assert (w[1:] <= w[:-1]).all() and 0 < float(w[7]) < float(w[2]) < 1  # strictly decaying across the overlap
    assert (rtc_weights(8, 0, 0) == 0).all() and (rtc_weights(8, 8, 8) == 1).all()
    with pytest.raises(ValueError, match="frozen <= overlap"):
        rtc_weights(8, 5, 3)


def test_inpainting_pins_frozen_entries_and_leaves_free_ones_alone() -> None:
    cfg = lowdim_config()
    policy = fitted_policy(cfg).eval()
    obs = lowdim_obs(cfg, 2)
    free = policy.predict(obs, generator=torch.Generator().manual_seed(4))
    prefix = torch.randn(2, *cfg.target_shape) * 2 + 1
    w = torch.zeros(cfg.horizon)
    w[:3] = 1.0
    guided = policy.predict(obs, generator=torch.Generator().manual_seed(4), prefix=prefix, prefix_weights=w)
    lo, hi = policy.normalizer.unnormalize("action", torch.full((1, 1, 2), -1.0)), \
        policy.normalizer.unnormalize("action", torch.full((1, 1, 2), 1.0))
    torch.testing.assert_close(guided[:, :3], prefix[:, :3].clamp(lo, hi), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(guided[:, 3:], free[:, 3:], atol=1e-3)  # the rest adapts to the pinned start
    zero = policy.predict(obs, generator=torch.Generator().manual_seed(4), prefix=prefix,
                          prefix_weights=torch.zeros(cfg.horizon))
    torch.testing.assert_close(zero, free, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="prefix_weights"):
        policy.predict(obs, prefix=prefix, prefix_weights=torch.ones(3))
    with pytest.raises(ValueError, match="both"):
        policy.predict(obs, prefix=prefix)
