"""TEMP-LoRA: the world model's fast, episodic memory, held in low-rank adapters that learn during inference.

Low-rank adapters sit on the temporal attention projections of the video denoiser (which ones, and the rank, are
configuration). After every generated chunk the memory takes one local gradient step on the masked diffusion loss of
[previous frames ⊕ current chunk] -- the previous frames as clean context, the chunk as the target -- so what the
episode has shown so far is written into the adapters and stays available after it leaves the context window. The
adapters start at zero (their up-projection is zero-initialised), so a fresh memory leaves the base model exactly
as it was; ``reset`` returns to that at every new episode. ``state`` / ``load_state`` copy the adapter tensors out
and back, which the slow-fast learning loop uses to keep the memory of each chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from world_model.video_diffusion import TemporalAttention, VideoDiffusion


@dataclass(frozen=True)
class TempLoRAConfig:
    """``targets``: which projections of each temporal attention get adapters; ``rank`` and ``alpha`` their size
    and scale (``alpha / rank`` multiplies the low-rank path); ``lr`` and ``steps`` the local update."""

    rank: int = 8
    alpha: float = 8.0
    targets: tuple[str, ...] = ("q", "k", "v", "out")
    lr: float = 1e-3
    steps: int = 1

    def __post_init__(self) -> None:
        if self.rank < 1 or self.steps < 1 or not self.lr > 0:
            raise ValueError(f"rank, steps >= 1 and lr > 0 required, got {self.rank}, {self.steps}, {self.lr}")
        unknown = set(self.targets) - {"q", "k", "v", "out"}
        if unknown or not self.targets:
            raise ValueError(f"targets must be a non-empty subset of q, k, v, out, got {list(self.targets)}")


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * up(down(x))``; ``up`` starts at zero. The base stays trainable (the slow-fast
    loop's outer update trains it); the local update reaches only the adapters."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        self.scale = alpha / rank
        self.reset()

    def reset(self, generator: torch.Generator | None = None) -> None:
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5, generator=generator)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.up(self.down(x))


def attach(model: VideoDiffusion, cfg: TempLoRAConfig) -> list[LoRALinear]:
    """Wrap the ``cfg.targets`` projections of every temporal attention of ``model`` in place; returns the adapters.
    Refuses a model that already has adapters."""
    adapters = []
    for module in model.modules():
        if isinstance(module, TemporalAttention):
            for name in cfg.targets:
                layer = getattr(module, name)
                if isinstance(layer, LoRALinear):
                    raise ValueError(f"this model already has TEMP-LoRA adapters on {name}")
                adapter = LoRALinear(layer, cfg.rank, cfg.alpha)
                setattr(module, name, adapter)
                adapters.append(adapter)
    if not adapters:
        raise ValueError("the model has no temporal attention layers to adapt")
    return adapters


class TempLoRAMemory:
    """The episodic memory of one rollout: adapters on ``model`` and the local update that writes into them."""

    def __init__(self, model: VideoDiffusion, cfg: TempLoRAConfig | None = None, seed: int = 0) -> None:
        self.model, self.cfg = model, cfg or TempLoRAConfig()
        self.adapters = attach(model, self.cfg)
        self.generator = torch.Generator().manual_seed(seed)
        self.reset()

    def parameters(self) -> Iterator[nn.Parameter]:
        for a in self.adapters:
            yield a.down.weight
            yield a.up.weight

    def reset(self, seed: int | None = None) -> None:
        """A new episode: adapters back to zero effect, optimiser state cleared. With ``seed`` the episode's memory
        is its own: the adapters' random start and the noise of its local updates are drawn from it (a rerun of
        the episode writes the same memory); without, they continue the process's random streams."""
        if seed is not None:
            self.generator.manual_seed(seed)
        for a in self.adapters:
            a.reset(self.generator if seed is not None else None)
        self.optimizer = torch.optim.Adam(list(self.parameters()), lr=self.cfg.lr)
        self.updates = 0

    def update(self, latents: torch.Tensor, actions: torch.Tensor, n_context: int) -> float:
        """One local update on latents (B, T, C, h, w) = [previous frames ⊕ current chunk] with actions (B, T, Da):
        the first ``n_context`` frames are the clean context, the rest the target. Only the adapters change: the
        gradient is taken with respect to them alone, so no other parameter's ``.grad`` is touched. Returns the mean
        loss of the steps."""
        params = list(self.parameters())
        total = 0.0
        for _ in range(self.cfg.steps):
            loss = self.model.masked_loss(latents.detach(), actions.detach(), n_context, self.generator)
            for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
                p.grad = g
            self.optimizer.step()
            total += float(loss.detach())
        for p in params:
            p.grad = None
        self.updates += 1
        return total / self.cfg.steps

    def state(self) -> dict[str, torch.Tensor]:
        """A copy of the adapter weights, {"<i>.down" / "<i>.up": tensor}."""
        out = {}
        for i, a in enumerate(self.adapters):
            out[f"{i}.down"] = a.down.weight.detach().clone()
            out[f"{i}.up"] = a.up.weight.detach().clone()
        return out

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Put back adapter weights saved by ``state``; refuses a state of another adapter layout."""
        expected = {f"{i}.{part}" for i in range(len(self.adapters)) for part in ("down", "up")}
        if set(state) != expected:
            raise ValueError(f"TEMP-LoRA state has keys {sorted(state)[:4]}..., expected {len(expected)} keys "
                             f"0.down .. {len(self.adapters) - 1}.up")
        with torch.no_grad():
            for i, a in enumerate(self.adapters):
                a.down.weight.copy_(state[f"{i}.down"])
                a.up.weight.copy_(state[f"{i}.up"])
