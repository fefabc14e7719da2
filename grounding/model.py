"""A slow-fast video-language model that grounds an operator's instruction in the episode's scene video.

Written from the ideas of "Slow-Fast Architecture for Video Multi-Modal LLMs" (SHI-Labs); not a port of its code.
A language model over [fast visual tokens][instruction tokens ... [CLS]] answers from the hidden state at ``[CLS]``:
which task, the goal fields, and when the instruction's "when" happens. The video reaches it two ways:

* *fast* tokens: the frames pooled in time (to ``fast_frames`` groups) and space (to ``fast_grid`` x ``fast_grid``),
  a fixed budget of ``fast_frames * fast_grid**2`` tokens in the sequence, whatever the number of frames T: the
  overview;
* *slow* tokens: every frame's full ``grid`` x ``grid`` map, ``T * grid**2`` tokens, never in the sequence. A few
  *hybrid* layers let the text positions (the readout included) cross-attend to them, so the detail is there for
  little compute: the slow tokens cost one K/V projection per hybrid layer and no attention among themselves.

The hybrid cross-attention reuses the layer's own self-attention query (the same ``q`` tensor), its K/V (and output)
projections start as copies of the self-attention's and its output is scaled by ``tanh(gate)`` per head, gate = 0 at
init: a fresh slow-fast model computes exactly what the fast-only model with the same weights does, and learns how
much detail to take. Visual tokens never query the slow tokens.

Two baselines share the code (``mode``): ``fast_only`` (the same model without the hybrid cross-attention) and
``full`` (all slow tokens placed in the sequence instead of the fast ones, plain self-attention over everything).

Glossary and shapes: ``B`` batch, ``T`` frames, ``N = grid**2`` slow tokens per frame, ``C`` visual feature width
(``visual_dim``), ``M`` fast tokens, ``V`` visual tokens in the sequence (M, or T * N in ``full``), ``L`` text
tokens (right-padded, ending in ``[CLS]``), ``S = V + L``, ``d`` model width, ``H`` heads, ``D = d / H``.
Frame tokens (B, T, N, C) come from ``FrameEncoder`` (images -> per-frame token maps) and can be cached, so
training the language model never re-runs the backbone. Normalised time ``t = i / T`` of frame ``i`` lies in
[0, 1); the keyframe head classifies it into ``num_time_bins`` equal bins. All frames of a batch count (fixed T).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from grounding.text import InstructionTokenizer
from rdp.checkpoint import CheckpointError, config_from_dict, load_checkpoint, load_config, save_checkpoint
from rdp.encoders import ResNetEncoder, Terminator

TASKS = ("wipe", "peel", "lift")
GOAL_FIELDS = {
    "region": ("all", "left", "right"),
    "force": ("normal", "gentle", "firm"),
    "height": ("low", "normal", "high"),
    "grip": ("normal", "gentle"),
}
MODES = ("slowfast", "fast_only", "full")
IGNORE_INDEX = -100  # a target that does not apply (a goal field of another task, a question without "when")
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class GroundingConfig:
    """Sizes of the grounding model (the defaults make about 2 M parameters) and its answer heads."""

    vocab_size: int = 1000
    max_text_len: int = 32  # L at most, [CLS] included
    visual_dim: int = 32  # C of the frame tokens: the frame encoder's feature width
    width: int = 192  # d
    layers: int = 4
    heads: int = 4
    hybrid_layers: tuple[int, ...] = (1, 3)  # the layers whose text positions cross-attend to the slow tokens
    mode: str = "slowfast"  # slowfast | fast_only | full
    grid: int = 4  # each frame's token map is grid x grid: N = grid**2 slow tokens per frame
    fast_frames: int = 16  # T frames are average-pooled in time into this many groups
    fast_grid: int = 2  # and each group's map into fast_grid x fast_grid: M = fast_frames * fast_grid**2
    num_time_bins: int = 16  # keyframe classes over normalised episode time [0, 1)
    dropout: float = 0.0
    tasks: tuple[str, ...] = TASKS
    goal_fields: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(GOAL_FIELDS))

    def __post_init__(self) -> None:
        # JSON gives lists: store tuples so that a loaded config equals the one saved.
        object.__setattr__(self, "hybrid_layers", tuple(self.hybrid_layers))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "goal_fields", {k: tuple(v) for k, v in dict(self.goal_fields).items()})
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.width % self.heads or self.width % 2:
            raise ValueError(f"width {self.width} must be even and divisible by heads {self.heads}")
        for name in ("vocab_size", "max_text_len", "visual_dim", "layers", "grid", "fast_frames", "fast_grid",
                     "num_time_bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.fast_grid > self.grid:
            raise ValueError(f"fast_grid {self.fast_grid} must be <= grid {self.grid} (fast tokens pool the map)")
        bad = [i for i in self.hybrid_layers if not 0 <= i < self.layers]
        if bad or len(set(self.hybrid_layers)) != len(self.hybrid_layers):
            raise ValueError(f"hybrid_layers {self.hybrid_layers} must be distinct layer indices in [0, {self.layers})")
        if self.mode == "slowfast" and not self.hybrid_layers:
            raise ValueError("mode='slowfast' needs at least one hybrid layer (without one it is mode='fast_only')")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.tasks:
            raise ValueError("tasks must name at least one task")
        for name, classes in self.goal_fields.items():
            if name in ("task", "keyframe") or not classes:
                raise ValueError(f"goal field {name!r} must have classes and not be called 'task' or 'keyframe'")

    @property
    def slots(self) -> int:
        """N: slow tokens per frame."""
        return self.grid**2

    @property
    def num_fast(self) -> int:
        """M: fast tokens per video, whatever T is."""
        return self.fast_frames * self.fast_grid**2

    @property
    def head_sizes(self) -> dict[str, int]:
        """Output name -> number of classes: task, one per goal field, keyframe."""
        return {"task": len(self.tasks), **{k: len(v) for k, v in self.goal_fields.items()},
                "keyframe": self.num_time_bins}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GroundingConfig:
        """Inverse of ``dataclasses.asdict`` after a JSON round trip; unknown keys raise."""
        return config_from_dict(cls, d)


def time_embedding(t: torch.Tensor, dim: int, max_frequency: float = 1000.0) -> torch.Tensor:
    """(...,) normalised times in [0, 1) -> (..., dim) sinusoid.

    Frequencies run from 1 to ``max_frequency`` radians per episode, so frames 1/128 of an episode apart still
    differ and the embedding means the same moment whatever T is.
    """
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(max_frequency), half, device=t.device, dtype=t.dtype))
    args = t[..., None] * freqs
    return torch.cat([args.sin(), args.cos()], dim=-1)


class VisualEmbedding(nn.Module):
    """Frame tokens (B, T, N, C) -> slow tokens (B, T * N, d) or fast tokens (B, M, d), each with where and when.

    Where: a learned embedding of the slot in the frame's map (slow) or in the pooled map (fast). When: a learned
    projection of the sinusoid of normalised time, the frame's own (slow) or its group's mean (fast). Fast tokens
    pool the raw features and then project (pooling and the affine projection commute), so fast-only inference never
    projects the T * N slow tokens.
    """

    def __init__(self, cfg: GroundingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(cfg.visual_dim, cfg.width)
        self.time_proj = nn.Linear(cfg.width, cfg.width)
        self.slot = nn.Parameter(torch.zeros(cfg.slots, cfg.width))
        self.fast_slot = nn.Parameter(torch.zeros(cfg.fast_grid**2, cfg.width))

    def when(self, t: torch.Tensor) -> torch.Tensor:
        """(K,) normalised times -> (K, d)."""
        return self.time_proj(time_embedding(t, self.cfg.width))

    def slow(self, frame_tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, N, C) -> (B, T * N, d), frame-major."""
        T = frame_tokens.shape[1]
        t = torch.arange(T, device=frame_tokens.device, dtype=frame_tokens.dtype) / T
        x = self.proj(frame_tokens) + self.slot + self.when(t)[:, None]  # (B, T, N, d)
        return x.flatten(1, 2)

    def fast(self, frame_tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, N, C) -> (B, M, d), group-major: average pools in time and space, then projects."""
        cfg = self.cfg
        B, T, N, C = frame_tokens.shape
        maps = frame_tokens.permute(0, 3, 1, 2).reshape(B, C, T, cfg.grid, cfg.grid)
        pooled = F.adaptive_avg_pool3d(maps, (cfg.fast_frames, cfg.fast_grid, cfg.fast_grid))  # (B, C, F, f, f)
        pooled = pooled.flatten(3).permute(0, 2, 3, 1)  # (B, F, f * f, C)
        t = torch.arange(T, device=frame_tokens.device, dtype=frame_tokens.dtype) / T
        t_group = F.adaptive_avg_pool1d(t[None, None], cfg.fast_frames)[0, 0]  # (F,) mean time of each group
        x = self.proj(pooled) + self.fast_slot + self.when(t_group)[:, None]  # (B, F, f * f, d)
        return x.flatten(1, 2)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, S, d) -> (B, H, S, D)."""
    B, S, d = x.shape
    return x.view(B, S, heads, d // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, S, D) -> (B, S, d)."""
    B, H, S, D = x.shape
    return x.transpose(1, 2).reshape(B, S, H * D)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention; ``project`` and ``attend`` are separate so a hybrid layer can reuse ``q``."""

    def __init__(self, cfg: GroundingConfig) -> None:
        super().__init__()
        self.heads, self.dropout = cfg.heads, cfg.dropout
        self.c_attn = nn.Linear(cfg.width, 3 * cfg.width)  # rows: q | k | v
        self.c_proj = nn.Linear(cfg.width, cfg.width)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def project(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, S, d) normed input -> q, k, v, each (B, H, S, D)."""
        q, k, v = self.c_attn(h).chunk(3, dim=2)
        return split_heads(q, self.heads), split_heads(k, self.heads), split_heads(v, self.heads)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v (B, H, S, D) -> (B, S, d), causal.

        Text is right-padded behind the visual tokens, so under the causal mask no real position ever sees a pad:
        a key-padding mask would change only the pads' own outputs, which nothing reads. Without an explicit mask
        PyTorch takes its fused causal kernel (at 128 frames of all tokens, a training step about 40 % faster).
        """
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.c_proj(merge_heads(y)))


class HybridCrossAttention(nn.Module):
    """Text queries (the layer's self-attention q) attend to every slow token: (B, H, L, D), (B, T * N, d) -> (B, L, d).

    Starts as a copy of the layer's self-attention (layer norm, k/v and output projections; see ``copy_from``) and
    with a zero gate, so it adds nothing until training opens the gate. The output projection has no bias, so a
    closed gate adds an exact zero whatever the weights are.
    """

    def __init__(self, cfg: GroundingConfig) -> None:
        super().__init__()
        self.heads, self.dropout = cfg.heads, cfg.dropout
        self.ln_slow = nn.LayerNorm(cfg.width)
        self.c_kv = nn.Linear(cfg.width, 2 * cfg.width)  # rows: k | v
        self.c_proj = nn.Linear(cfg.width, cfg.width, bias=False)
        self.gate = nn.Parameter(torch.zeros(cfg.heads))  # output scale tanh(gate), per head
        self.resid_drop = nn.Dropout(cfg.dropout)

    @torch.no_grad()
    def copy_from(self, attn: CausalSelfAttention, ln: nn.LayerNorm) -> None:
        """Initialise from the layer's self-attention, so the slow tokens are read like in-sequence tokens."""
        d = self.c_proj.weight.shape[0]
        self.ln_slow.load_state_dict(ln.state_dict())
        self.c_kv.weight.copy_(attn.c_attn.weight[d:])
        self.c_kv.bias.copy_(attn.c_attn.bias[d:])
        self.c_proj.weight.copy_(attn.c_proj.weight)

    def forward(self, q_text: torch.Tensor, slow: torch.Tensor) -> torch.Tensor:
        k, v = self.c_kv(self.ln_slow(slow)).chunk(2, dim=2)  # (B, T * N, d) each
        y = F.scaled_dot_product_attention(q_text, split_heads(k, self.heads), split_heads(v, self.heads),
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, L, D)
        y = y * torch.tanh(self.gate)[None, :, None, None]
        return self.resid_drop(self.c_proj(merge_heads(y)))


class MLP(nn.Module):
    def __init__(self, cfg: GroundingConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.width, 4 * cfg.width)
        self.c_proj = nn.Linear(4 * cfg.width, cfg.width)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm decoder layer, (B, S, d) -> (B, S, d); a hybrid one also updates the text positions from the slow
    tokens, with the same query its self-attention used."""

    def __init__(self, cfg: GroundingConfig, hybrid: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.width)
        self.attn = CausalSelfAttention(cfg)
        self.cross = HybridCrossAttention(cfg) if hybrid else None
        self.ln_2 = nn.LayerNorm(cfg.width)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, slow: torch.Tensor | None, num_visual: int) -> torch.Tensor:
        """x (B, S, d), slow (B, T * N, d) or None; positions >= num_visual are text (right-padded)."""
        q, k, v = self.attn.project(self.ln_1(x))
        x = x + self.attn.attend(q, k, v)
        if self.cross is not None:
            if slow is None:
                raise ValueError("a hybrid layer needs the slow tokens, got None")
            text = x[:, num_visual:] + self.cross(q[:, :, num_visual:], slow)
            x = torch.cat([x[:, :num_visual], text], dim=1)  # visual positions untouched
        return x + self.mlp(self.ln_2(x))


class GroundingModel(nn.Module):
    """(frame tokens (B, T, N, C), text ids (B, L), text mask (B, L)) -> {head name: logits (B, classes)}."""

    def __init__(self, cfg: GroundingConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or GroundingConfig()
        self.visual = VisualEmbedding(cfg)
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.width)
        self.text_pos = nn.Parameter(torch.zeros(cfg.max_text_len, cfg.width))
        self.drop = nn.Dropout(cfg.dropout)
        hybrid = set(cfg.hybrid_layers) if cfg.mode == "slowfast" else set()
        self.blocks = nn.ModuleList(Block(cfg, i in hybrid) for i in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.width)
        self.heads = nn.ModuleDict({name: nn.Linear(cfg.width, n) for name, n in cfg.head_sizes.items()})

        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: residual projections scaled down with depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.layers))
            elif name in ("text_pos", "visual.slot", "visual.fast_slot"):
                nn.init.normal_(p, mean=0.0, std=0.02)
        # The projector keeps PyTorch's fan-in init: frame features are about unit scale, and at std 0.02 what is
        # seen would drown under where and when it was seen.
        self.visual.proj.reset_parameters()
        self.init_hybrid_from_self_attention()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def init_hybrid_from_self_attention(self) -> None:
        """Copy every hybrid layer's self-attention into its cross-attention and close the gate (e.g. after loading
        fast-only weights)."""
        for block in self.blocks:
            if block.cross is not None:
                block.cross.copy_from(block.attn, block.ln_1)
                nn.init.zeros_(block.cross.gate)

    def forward(self, frame_tokens: torch.Tensor, text_ids: torch.Tensor,
                text_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, T, N, C), (B, L) long, (B, L) bool right-padded -> {"task", *goal fields, "keyframe"}: (B, classes)."""
        x, num_visual = self.hidden_states(frame_tokens, text_ids, text_mask)
        last = num_visual + text_mask.sum(dim=1) - 1  # the [CLS] of each instruction
        readout = x[torch.arange(x.shape[0], device=x.device), last]  # (B, d)
        return {name: head(readout) for name, head in self.heads.items()}

    def hidden_states(self, frame_tokens: torch.Tensor, text_ids: torch.Tensor,
                      text_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
        """-> final-norm hidden states (B, V + L, d) and V, the number of visual tokens in front of the text."""
        self._check_inputs(frame_tokens, text_ids, text_mask)
        cfg = self.cfg
        L = text_ids.shape[1]
        text = self.tok_emb(text_ids) + self.text_pos[:L]  # (B, L, d)
        slow = self.visual.slow(frame_tokens) if cfg.mode != "fast_only" else None  # (B, T * N, d)
        visual = slow if cfg.mode == "full" else self.visual.fast(frame_tokens)  # (B, V, d)
        x = self.drop(torch.cat([visual, text], dim=1))
        V = visual.shape[1]
        for block in self.blocks:
            x = block(x, slow, V)
        return self.ln_f(x), V

    def _check_inputs(self, frame_tokens: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor) -> None:
        cfg = self.cfg
        if frame_tokens.ndim != 4 or frame_tokens.shape[2:] != (cfg.slots, cfg.visual_dim):
            raise ValueError(f"frame_tokens must be (B, T, N={cfg.slots}, C={cfg.visual_dim}), "
                             f"got {tuple(frame_tokens.shape)}")
        B = frame_tokens.shape[0]
        if text_ids.ndim != 2 or text_ids.shape[0] != B or text_mask.shape != text_ids.shape:
            raise ValueError(f"text_ids and text_mask must both be (B={B}, L), got {tuple(text_ids.shape)} and "
                             f"{tuple(text_mask.shape)}")
        if not 1 <= text_ids.shape[1] <= cfg.max_text_len:
            raise ValueError(f"text length L={text_ids.shape[1]} must be in [1, max_text_len={cfg.max_text_len}]")
        if text_mask.dtype != torch.bool:
            raise ValueError(f"text_mask must be bool (True on real tokens), got {text_mask.dtype}")
        if not bool(text_mask[:, 0].all()) or bool((text_mask[:, 1:] & ~text_mask[:, :-1]).any()):
            raise ValueError("text_mask must be right-padded with at least one real token per row: True...True "
                             "then False...False")
        if int(text_ids.min()) < 0 or int(text_ids.max()) >= cfg.vocab_size:
            raise ValueError(f"text_ids must lie in [0, vocab_size={cfg.vocab_size}), got values "
                             f"{int(text_ids.min())}..{int(text_ids.max())}")

    def loss(self, outputs: Mapping[str, torch.Tensor],
             targets: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sum over heads of the mean cross-entropy over the targets that apply (``IGNORE_INDEX`` elsewhere).

        ``targets`` holds a (B,) long tensor per output name. A head whose targets are all ignored in a batch adds
        an exact zero (plain mean cross-entropy would add NaN). Returns the total and each head's (detached) loss.
        """
        parts: dict[str, torch.Tensor] = {}
        for name, logits in outputs.items():
            if name not in targets:
                raise ValueError(f"targets lacks {name!r}: a (B,) long tensor of class indices, {IGNORE_INDEX} where "
                                 f"it does not apply; got keys {sorted(targets)}")
            target = targets[name]
            classes = logits.shape[1]
            if target.shape != logits.shape[:1] or target.dtype != torch.long:
                raise ValueError(f"targets[{name!r}] must be a long tensor of shape {tuple(logits.shape[:1])}, got "
                                 f"{target.dtype} {tuple(target.shape)}")
            bad = (target != IGNORE_INDEX) & ((target < 0) | (target >= classes))
            if bool(bad.any()):
                raise ValueError(f"targets[{name!r}] has {target[bad].tolist()}: classes are 0..{classes - 1} "
                                 f"(or {IGNORE_INDEX})")
            total = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
            parts[name] = total / (target != IGNORE_INDEX).sum().clamp_min(1)
        total = torch.stack(list(parts.values())).sum()
        return total, {k: v.detach() for k, v in parts.items()}


# ------------------------------------------------------------------------------------------------ frame encoder


class FrameEncoder(nn.Module):
    """Images (B, T, 3, H, W), uint8 or float in [0, 1] -> frame tokens (B, T, grid**2, C): a backbone's feature map
    average-pooled to grid x grid.

    ``backbone`` is any module with ``feature_map`` ((B', 3, H, W) -> (B', C, H', W')) and ``feature_dim``: the
    project's ``Terminator`` (``FrameEncoder.terminator``) or ``ResNetEncoder`` (``FrameEncoder.resnet``). Frames go
    through in chunks of ``chunk`` so that a long video does not hold every activation at once. Meant to run once,
    in eval mode, to cache frame tokens (a Terminator's ``slow_loss()`` would only cover the last chunk).
    """

    def __init__(self, backbone: nn.Module, grid: int = 4, chunk: int = 64) -> None:
        super().__init__()
        if not hasattr(backbone, "feature_map") or not hasattr(backbone, "feature_dim"):
            raise TypeError(f"{type(backbone).__name__} has no feature_map / feature_dim; use Terminator or "
                            "ResNetEncoder from rdp.encoders")
        if grid < 1 or chunk < 1:
            raise ValueError(f"grid and chunk must be >= 1, got {grid} and {chunk}")
        self.backbone, self.grid, self.chunk = backbone, grid, chunk

    @classmethod
    def terminator(cls, grid: int = 4, width: int = 32, depth: int = 3, patch_size: int = 4) -> FrameEncoder:
        """The Terminator as configured for 96x96 camera images (a 24x24 map for patch_size=4)."""
        return cls(Terminator(in_channels=3, num_classes=None, width=width, depth=depth, patch_size=patch_size), grid)

    @classmethod
    def resnet(cls, grid: int = 4, width: int = 32, stem_stride: int = 4) -> FrameEncoder:
        """The ResNet-style baseline backbone (features 4 * width wide)."""
        return cls(ResNetEncoder(in_channels=3, num_classes=None, width=width, stem_stride=stem_stride), grid)

    @property
    def feature_dim(self) -> int:
        """C: what ``GroundingConfig.visual_dim`` must be."""
        return int(self.backbone.feature_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be (B, T, 3, H, W), got {tuple(images.shape)}")
        B, T = images.shape[:2]
        x = images.flatten(0, 1)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        x = x * 2.0 - 1.0  # [-1, 1], as the policies feed their image encoders
        maps = [F.adaptive_avg_pool2d(self.backbone.feature_map(part), self.grid) for part in x.split(self.chunk)]
        tokens = torch.cat(maps).flatten(2).transpose(1, 2)  # (B * T, grid**2, C)
        return tokens.reshape(B, T, self.grid**2, -1)


# -------------------------------------------------------------------------------------------------- checkpoints


def save(model: GroundingModel, tokenizer: InstructionTokenizer, directory: str | os.PathLike[str]) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``tokenizer.json`` to ``directory`` (each atomically)."""
    if tokenizer.vocab_size != model.cfg.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                         f"{model.cfg.vocab_size}: they were not made for each other")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(directory / TOKENIZER_FILE)
    return save_checkpoint(directory, model, model.cfg)  # config.json last: a complete checkpoint


def load(directory: str | os.PathLike[str]) -> tuple[GroundingModel, InstructionTokenizer]:
    """The model (in eval mode) and tokenizer saved by ``save``; a missing file, a config this code cannot build or
    one that does not match the weights is an error naming the file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"grounding checkpoint directory not found: {directory} (expected config.json, "
                                f"model.safetensors and {TOKENIZER_FILE})")
    model_name, config = load_config(directory)
    if model_name != GroundingModel.__name__:
        raise CheckpointError(f"{directory}: holds a {model_name}, not a {GroundingModel.__name__}")
    try:
        cfg = GroundingConfig.from_dict(config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{directory / 'config.json'}: not a valid grounding config ({e})") from e
    tokenizer = InstructionTokenizer.load(directory / TOKENIZER_FILE)
    if tokenizer.vocab_size != cfg.vocab_size:
        raise CheckpointError(f"{directory / TOKENIZER_FILE} has {tokenizer.vocab_size} tokens but config.json says "
                              f"vocab_size={cfg.vocab_size}")
    model = GroundingModel(cfg)
    load_checkpoint(directory, model)
    return model.eval(), tokenizer
