"""AsymmetricTokenizer: shapes, incremental == full decoding, conditioning, a tiny overfit, bad inputs."""

from __future__ import annotations

import pytest
import torch

from rdp.tokenizer import AsymmetricTokenizer, TokenizerConfig

SMALL = dict(encoder_hidden=16, decoder_hidden=32)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def make(
    cond_dim: int = 6, action_dim: int = 7, dtype: torch.dtype = torch.float32, **kw: object
) -> AsymmetricTokenizer:
    cfg = TokenizerConfig(action_dim=action_dim, cond_dim=cond_dim, **{**SMALL, **kw})
    return AsymmetricTokenizer(cfg).to(dtype).eval()


def decode_incrementally(model: AsymmetricTokenizer, z: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    state = model.init_state(z)
    actions = []
    for t in range(model.cfg.horizon):
        action, state = model.step(state, None if cond is None else cond[:, t])
        actions.append(action)
    return torch.stack(actions, dim=1)


def test_shapes() -> None:
    model = make(cond_dim=15, action_dim=10)
    actions, cond = torch.randn(3, 32, 10), torch.randn(3, 32, 15)
    z, mean, logvar = model.encode(actions)
    assert z.shape == mean.shape == logvar.shape == (3, 8, 16)
    assert model.decode(z, cond).shape == (3, 32, 10)
    assert model(actions, cond).shape == (3, 32, 10)
    action, state = model.step(model.init_state(z), cond[:, 0])
    assert action.shape == (3, 10) and state.hidden.shape == (3, 32) and state.t == 1


def test_encode_samples_in_training_and_returns_mean_in_eval() -> None:
    model = make()
    actions = torch.randn(2, 32, 7)
    z, mean, _ = model.encode(actions)
    assert torch.equal(z, mean)
    model.train()
    z, mean, _ = model.encode(actions)
    assert not torch.equal(z, mean)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cond_dim", [0, 6, 30])
def test_incremental_equals_full_decoding(dtype: torch.dtype, cond_dim: int) -> None:
    model = make(cond_dim=cond_dim, dtype=dtype)
    z = torch.randn(4, 8, 16, dtype=dtype)
    cond = torch.randn(4, 32, cond_dim, dtype=dtype) if cond_dim else None
    with torch.no_grad():
        full = model.decode(z, cond)
        stepped = decode_incrementally(model, z, cond)
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_incremental_matches_at_every_chunk_position_with_gradients_on(dtype: torch.dtype) -> None:
    """Each tick's action equals the full decode at that position: first, latent-step boundaries, last."""
    model = make(cond_dim=6, dtype=dtype, decoder_hidden=64)
    z, cond = torch.randn(2, 8, 16, dtype=dtype), torch.randn(2, 32, 6, dtype=dtype)
    full = model.decode(z, cond)
    state = model.init_state(z)
    checked = {0, 3, 4, 5, 15, 16, 27, 31}
    for t in range(32):
        action, state = model.step(state, cond[:, t])
        if t in checked:
            torch.testing.assert_close(action, full[:, t], atol=1e-5, rtol=0)


def test_conditioning_changes_only_later_actions() -> None:
    """The decoder is causal in the conditioning: changing c_t moves a_t.. but not a_0..a_{t-1}."""
    model = make(cond_dim=6)
    z, cond = torch.randn(1, 8, 16), torch.randn(1, 32, 6)
    bumped = cond.clone()
    bumped[:, 20] += 1.0
    with torch.no_grad():
        a, b = model.decode(z, cond), model.decode(z, bumped)
    torch.testing.assert_close(a[:, :20], b[:, :20], atol=0, rtol=0)
    assert (a[:, 20] - b[:, 20]).abs().max() > 1e-4


def test_cond_dim_zero() -> None:
    model = make(cond_dim=0)
    actions = torch.randn(2, 32, 7)
    z, _, _ = model.encode(actions)
    assert model.decode(z).shape == (2, 32, 7)
    assert model.decode(z, torch.empty(2, 32, 0)).shape == (2, 32, 7)
    assert set(model.loss(actions)) == {"loss", "recon", "kl"}
    action, _ = model.step(model.init_state(z))
    assert action.shape == (2, 7)


def test_tiny_tokenizer_overfits_a_few_chunks() -> None:
    cfg = TokenizerConfig(action_dim=4, cond_dim=3, encoder_hidden=32, decoder_hidden=48, recon_loss="mse")
    model = AsymmetricTokenizer(cfg)
    t = torch.linspace(0, 1, 32)
    freq = torch.tensor([1.0, 2.0, 3.0, 0.5]).reshape(4, 1, 1)
    phase = torch.arange(4).reshape(1, 1, 4) * 0.7
    actions = torch.sin(2 * torch.pi * freq * t.reshape(1, 32, 1) + phase)  # (4 chunks, 32, 4)
    cond = torch.randn(4, 32, 3) * 0.1
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        first = model.loss(actions, cond)["recon"].item()
    for _ in range(200):
        loss = model.loss(actions, cond)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        last = model.loss(actions, cond)["recon"].item()
    assert last < first / 20, (first, last)  # ~1000x in practice; the brief asks for > 5x


def test_loss_parts() -> None:
    model = make(kl_weight=0.5)
    model.train()
    out = model.loss(torch.randn(2, 32, 7), torch.randn(2, 32, 6))
    assert out["kl"] >= 0
    torch.testing.assert_close(out["loss"], out["recon"] + 0.5 * out["kl"])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.encode(torch.randn(2, 30, 7)), r"actions: expected shape \(B, 32, 7\), got \(2, 30, 7\)"),
        (lambda m: m.encode(torch.randn(2, 32)), r"actions: expected shape \(B, 32, 7\), got \(2, 32\)"),
        (lambda m: m.decode(torch.randn(2, 4, 16), torch.randn(2, 32, 6)), r"z: expected shape \(B, 8, 16\)"),
        (lambda m: m.decode(torch.randn(2, 8, 16), torch.randn(2, 32, 5)), r"cond: expected shape \(2, 32, 6\)"),
        (lambda m: m.decode(torch.randn(2, 8, 16), None), r"cond: expected shape \(B, T, 6\), got None"),
        (lambda m: m.step(m.init_state(torch.randn(2, 8, 16)), torch.randn(3, 6)), r"cond_t: expected shape \(2, 6\)"),
    ],
)
def test_bad_shapes_raise(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(make(cond_dim=6))  # type: ignore[operator]


def test_conditioning_given_to_unconditioned_tokenizer_raises() -> None:
    with pytest.raises(ValueError, match="cond_dim=0"):
        make(cond_dim=0).decode(torch.randn(1, 8, 16), torch.randn(1, 32, 6))


def test_stepping_past_the_horizon_raises() -> None:
    model = make(cond_dim=0)
    state = model.init_state(torch.randn(1, 8, 16))
    for _ in range(32):
        _, state = model.step(state)
    with pytest.raises(ValueError, match="chunk exhausted"):
        model.step(state)


@pytest.mark.parametrize(
    "kw", [dict(horizon=32, latent_steps=6), dict(horizon=24, latent_steps=8), dict(cond_dim=-1), dict(action_dim=0)]
)
def test_bad_config_raises(kw: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        TokenizerConfig(**{"action_dim": 7, **kw})


def test_other_downsampling_factors() -> None:
    model = make(horizon=16, latent_steps=8)  # f = 2: one stride-2 conv
    z, _, _ = model.encode(torch.randn(1, 16, 7))
    assert z.shape == (1, 8, 16)
    cond = torch.randn(1, 16, 6)
    with torch.no_grad():
        torch.testing.assert_close(decode_incrementally(model, z, cond), model.decode(z, cond), atol=1e-5, rtol=0)
