"""Asymmetric tokenizer (AT): the fast half of the Reactive Diffusion Policy.

Written from the ideas of Xue et al. 2025, "Reactive Diffusion Policy: Slow-Fast Visual-Tactile Policy Learning
for Contact-Rich Manipulation"; not a port of the public code.

Glossary: ``B`` batch, ``T`` action horizon (32), ``Da`` action dim, ``L`` latent steps (8), ``C`` latent
channels (16), ``f = T // L`` temporal downsampling (4), ``Dc`` per-step conditioning dim (``cond_dim``: the
tactile PCA embedding, 15 per pad, or the 6-D wrench; 0 for none), ``H`` decoder hidden size.

The slow latent diffusion policy predicts ``z`` (B, L, C) a few times a second. The tokenizer is asymmetric:

* ``encode`` -- a 1-D conv stack compresses an action chunk (B, T, Da) into a Gaussian latent (B, L, C). It sees
  actions only; it is used to build the LDP's training targets.
* ``decode`` -- a GRU that at step ``t`` reads the latent step covering ``t`` (``z[:, t // f]``) together with the
  conditioning ``c_t`` measured *now*, and emits ``a_t``. The initial hidden state is a function of the whole
  latent, so step 0 already knows the chunk's plan; the per-step inputs let fast tactile/wrench feedback bend it.

Incremental decoding runs the same GRU one control tick at a time with a carried hidden state: ``init_state(z)``
once per chunk, then ``step(state, c_t)`` per tick, which is constant work per tick. (RDP's public code re-runs
the GRU over the whole chunk so far at every tick, which is O(t) per tick.) ``step`` is exact: it equals
``decode`` up to float rounding, and the tests hold it to 1e-5.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

LOGVAR_RANGE = (-30.0, 20.0)  # keeps exp(logvar) finite early in training


@dataclass(frozen=True)
class TokenizerConfig:
    """Sizes of the asymmetric tokenizer. Defaults follow RDP's real-robot settings (T=32, L=8, C=16)."""

    action_dim: int
    cond_dim: int = 0
    horizon: int = 32
    latent_steps: int = 8
    latent_channels: int = 16
    encoder_hidden: int = 64
    decoder_hidden: int = 128
    kl_weight: float = 1e-6
    recon_loss: Literal["l1", "mse"] = "l1"

    def __post_init__(self) -> None:
        for name in ("action_dim", "horizon", "latent_steps", "latent_channels", "encoder_hidden", "decoder_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"TokenizerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.cond_dim < 0:
            raise ValueError(f"TokenizerConfig.cond_dim must be >= 0, got {self.cond_dim}")
        factor, rem = divmod(self.horizon, self.latent_steps)
        if rem or factor & (factor - 1):
            raise ValueError(
                f"horizon / latent_steps must be a power of two, got horizon={self.horizon}, "
                f"latent_steps={self.latent_steps}"
            )
        if self.recon_loss not in ("l1", "mse"):
            raise ValueError(f"TokenizerConfig.recon_loss must be 'l1' or 'mse', got {self.recon_loss!r}")

    @property
    def downsample(self) -> int:
        """f: action steps per latent step."""
        return self.horizon // self.latent_steps

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DecoderState:
    """What the fast loop carries between ticks of one chunk.

    hidden: (B, H) GRU hidden state after ``t`` steps.
    latent_gates: (B, L, 3H) the latent's contribution to the GRU input gates (plus input bias), computed once per
        chunk so a tick only pays for the conditioning part.
    t: the next action step to emit, 0 <= t <= T.
    """

    hidden: torch.Tensor
    latent_gates: torch.Tensor
    t: int


def _check_shape(name: str, x: torch.Tensor, expected: tuple[int | None, ...], symbols: str) -> None:
    """Raise ValueError naming ``name``, the expected shape (None = any size) and the actual one."""
    if x.dim() != len(expected) or any(e is not None and e != s for e, s in zip(expected, x.shape, strict=True)):
        want = ", ".join(sym if e is None else str(e) for sym, e in zip(symbols.split(), expected, strict=True))
        raise ValueError(f"{name}: expected shape ({want}), got {tuple(x.shape)}")


class ActionEncoder(nn.Module):
    """(B, T, Da) -> mean, logvar (B, L, C): conv, then log2(f) stride-2 convs, then a 1x1 head."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        hidden = cfg.encoder_hidden
        layers: list[nn.Module] = [nn.Conv1d(cfg.action_dim, hidden, kernel_size=5, padding=2), nn.Mish()]
        for _ in range(int(math.log2(cfg.downsample))):  # each halves T: kernel 4, stride 2, padding 1
            layers += [nn.Conv1d(hidden, hidden, kernel_size=4, stride=2, padding=1), nn.Mish()]
        layers += [nn.Conv1d(hidden, hidden, kernel_size=3, padding=1), nn.Mish()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv1d(hidden, 2 * cfg.latent_channels, kernel_size=1)

    def forward(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.head(self.body(actions.transpose(1, 2)))  # (B, 2C, L)
        mean, logvar = h.transpose(1, 2).chunk(2, dim=-1)  # (B, L, C) each
        return mean, logvar.clamp(*LOGVAR_RANGE)


class AsymmetricTokenizer(nn.Module):
    """Action-chunk VAE with a conv encoder and a conditioned, incrementally steppable GRU decoder."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        L, C, H = cfg.latent_steps, cfg.latent_channels, cfg.decoder_hidden
        self.encoder = ActionEncoder(cfg)
        self.init_hidden = nn.Linear(L * C, H)  # whole latent -> h_0
        # GRU input at step t: [z[:, t // f], c_t]  (C + Dc). Gate order r, z, n as in nn.GRU.
        self.gru = nn.GRU(C + cfg.cond_dim, H, batch_first=True)
        self.head = nn.Linear(H, cfg.action_dim)

    # ----------------------------------------------------------------------------------------------- encoder

    def encode(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """actions (B, T, Da) -> z, mean, logvar, each (B, L, C). z is a posterior sample in training, the mean
        in eval."""
        cfg = self.cfg
        _check_shape("actions", actions, (None, cfg.horizon, cfg.action_dim), "B T Da")
        mean, logvar = self.encoder(actions)
        z = (mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)) if self.training else mean
        return z, mean, logvar

    # ----------------------------------------------------------------------------------------------- decoder

    def decode(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, L, C), cond (B, T, Dc) or None when Dc = 0 -> actions (B, T, Da), whole chunk at once."""
        cfg = self.cfg
        self._check_latent(z)
        cond = self._check_cond("cond", cond, (z.shape[0], cfg.horizon, cfg.cond_dim), "B T Dc")
        latent_per_step = z.repeat_interleave(cfg.downsample, dim=1)  # (B, T, C)
        inputs = latent_per_step if cond is None else torch.cat([latent_per_step, cond], dim=-1)  # (B, T, C + Dc)
        h0 = self._initial_hidden(z)  # (B, H)
        out, _ = self.gru(inputs, h0.unsqueeze(0))  # (B, T, H)
        return self.head(out)

    def init_state(self, z: torch.Tensor) -> DecoderState:
        """Start decoding a new chunk from its latent z (B, L, C). Once per chunk, O(L)."""
        self._check_latent(z)
        C = self.cfg.latent_channels
        w_ih, b_ih = self.gru.weight_ih_l0, self.gru.bias_ih_l0  # (3H, C + Dc), (3H,)
        latent_gates = F.linear(z, w_ih[:, :C], b_ih)  # (B, L, 3H)
        return DecoderState(hidden=self._initial_hidden(z), latent_gates=latent_gates, t=0)

    def step(self, state: DecoderState, cond_t: torch.Tensor | None = None) -> tuple[torch.Tensor, DecoderState]:
        """One control tick: cond_t (B, Dc) or None when Dc = 0 -> action a_t (B, Da) and the next state.

        One GRU cell step, written out so the latent part of the input gates is reused from ``init_state``:
            r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
            u = sigmoid(W_iz x + b_iz + W_hz h + b_hz)        (nn.GRU's "z", the update gate)
            n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
            h' = (1 - u) * n + u * h
        """
        cfg = self.cfg
        if not 0 <= state.t < cfg.horizon:
            raise ValueError(f"step: chunk exhausted, t={state.t} but the horizon is {cfg.horizon}; call init_state")
        h = state.hidden
        B, H = h.shape
        cond_t = self._check_cond("cond_t", cond_t, (B, cfg.cond_dim), "B Dc")
        gi = state.latent_gates[:, state.t // cfg.downsample]  # (B, 3H)
        if cond_t is not None:
            gi = torch.addmm(gi, cond_t, self.gru.weight_ih_l0[:, cfg.latent_channels :].t())
        gh = torch.addmm(self.gru.bias_hh_l0, h, self.gru.weight_hh_l0.t())  # (B, 3H)
        reset, update = torch.sigmoid(gi[:, : 2 * H] + gh[:, : 2 * H]).chunk(2, dim=1)
        candidate = torch.tanh(torch.addcmul(gi[:, 2 * H :], reset, gh[:, 2 * H :]))
        h = torch.lerp(candidate, h, update)  # (1 - u) * n + u * h
        action = torch.addmm(self.head.bias, h, self.head.weight.t())  # (B, Da)
        return action, DecoderState(hidden=h, latent_gates=state.latent_gates, t=state.t + 1)

    # ----------------------------------------------------------------------------------------------- training

    def forward(self, actions: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruct: actions (B, T, Da), cond (B, T, Dc) -> (B, T, Da)."""
        z, _, _ = self.encode(actions)
        return self.decode(z, cond)

    def loss(self, actions: torch.Tensor, cond: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{"loss", "recon", "kl"} for actions (B, T, Da) and cond (B, T, Dc).

        recon is the per-element mean L1 (or MSE); kl is KL(q(z|a) || N(0, I)) summed over (L, C) and averaged over
        the batch, so kl_weight ~1e-6 only keeps the latent scale in check, as in latent-diffusion autoencoders.
        """
        z, mean, logvar = self.encode(actions)
        recon_actions = self.decode(z, cond)
        if self.cfg.recon_loss == "l1":
            recon = F.l1_loss(recon_actions, actions)
        else:
            recon = F.mse_loss(recon_actions, actions)
        kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2)).mean()
        return {"loss": recon + self.cfg.kl_weight * kl, "recon": recon, "kl": kl}

    # ----------------------------------------------------------------------------------------------- helpers

    def _initial_hidden(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.init_hidden(z.flatten(1)))  # (B, L * C) -> (B, H)

    def _check_latent(self, z: torch.Tensor) -> None:
        _check_shape("z", z, (None, self.cfg.latent_steps, self.cfg.latent_channels), "B L C")

    def _check_cond(
        self, name: str, cond: torch.Tensor | None, expected: tuple[int, ...], symbols: str
    ) -> torch.Tensor | None:
        """Return cond, or None when the tokenizer takes no conditioning (an empty tensor is accepted then)."""
        if self.cfg.cond_dim == 0:
            if cond is not None and cond.numel() != 0:
                raise ValueError(f"{name}: this tokenizer has cond_dim=0, got a tensor of shape {tuple(cond.shape)}")
            return None
        if cond is None:
            want = ", ".join([*symbols.split()[:-1], str(expected[-1])])
            raise ValueError(f"{name}: expected shape ({want}), got None")
        _check_shape(name, cond, expected, symbols)
        return cond
