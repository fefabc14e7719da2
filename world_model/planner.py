"""Planning with the world model: imagine every candidate plan, score the imagined frames, pick the best.

``WorldModelPlanner`` keeps what the camera has seen (latents and the actions between them). With a TEMP-LoRA memory
it writes every new chunk of real frames into the adapters as it arrives -- one local update on [previous frames ⊕
the chunk] per chunk, as the world model does during generation -- so a view that left the context window long ago
is still in the weights. With ``reverse`` each chunk is also written in played backwards (the
camera's way back over a static scene: the frames it would see retracing its path). ``decide`` imagines all
candidate plans at once (one batch, chunk by chunk from the newest ``context`` real frames; first ``replay`` passes
over the stored chunks, where set), scores the last ``score_frames`` imagined frames of each with a learned head
and returns the best. The imagination never writes into the memory: the candidates are hypotheses, the memory
holds what was seen.

``MarkerScorer`` is that head for the marker task: the probability that a frame shows the marker in the middle of
the view. It is trained on real frames and on the same frames passed through the world model's autoencoder (what
imagined frames look like), labelled from the simulator's geometry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from world_model.autoencoder import FrameAutoencoder
from world_model.temp_lora import TempLoRAMemory
from world_model.train import frames_tensor
from world_model.video_diffusion import VideoDiffusion


@dataclass(frozen=True)
class ScorerConfig:
    image_size: int = 32
    width: int = 16

    def __post_init__(self) -> None:
        if self.image_size % 8 or self.image_size < 16 or self.width < 4:
            raise ValueError(f"image_size must be a multiple of 8 (>= 16) and width >= 4, got {self}")


class MarkerScorer(nn.Module):
    """(N, 3, S, S) frames in [0, 1] -> (N,) logits that the marker is in the middle of the view. Three stride-2
    convolutions, then a linear layer over the whole map (where in the view matters)."""

    def __init__(self, cfg: ScorerConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or ScorerConfig()
        w = cfg.width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, 2, 1), nn.SiLU(), nn.Conv2d(w, 2 * w, 3, 2, 1), nn.SiLU(),
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1), nn.SiLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * (cfg.image_size // 8) ** 2, 64), nn.SiLU(),
                                  nn.Linear(64, 1))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[1:] != (3, self.cfg.image_size, self.cfg.image_size):
            raise ValueError(f"frames must be (N, 3, {self.cfg.image_size}, {self.cfg.image_size}), "
                             f"got {tuple(frames.shape)}")
        return self.head(self.features(frames))[:, 0]

    @torch.no_grad()
    def score(self, frames: np.ndarray) -> np.ndarray:
        """(..., S, S, 3) uint8 -> (...) probabilities."""
        lead = frames.shape[:-3]
        x = frames_tensor(frames.reshape(-1, *frames.shape[-3:]))
        return torch.sigmoid(self(x)).numpy().reshape(lead)


@dataclass
class Decision:
    index: int
    scores: np.ndarray  # (K,)
    imagined: np.ndarray  # (K, L, S, S, 3) uint8
    seconds: float


class WorldModelPlanner:
    """Imagine-and-score planning over a world model, with or without a TEMP-LoRA episodic memory.

    ``observe`` real frames (and the actions into them) as they come; ``decide`` among candidate action sequences.
    ``reset`` at every new episode."""

    def __init__(self, ae: FrameAutoencoder, model: VideoDiffusion, scorer: MarkerScorer,
                 memory: TempLoRAMemory | None = None, context: int = 0, score_frames: int = 2,
                 seed: int = 0, reverse: bool = False, replay: int = 0) -> None:
        self.ae, self.model, self.scorer, self.memory = ae, model, scorer, memory
        self.reverse, self.replay = reverse, replay
        self.context = context or model.cfg.context_frames
        if not 1 <= self.context <= model.cfg.context_frames:
            raise ValueError(f"context must be in 1 .. {model.cfg.context_frames}, got {context}")
        if score_frames < 1:
            raise ValueError(f"score_frames must be >= 1, got {score_frames}")
        self.score_frames = score_frames
        self.seed = seed
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self.latents: list[torch.Tensor] = []
        self.actions: list[np.ndarray] = []
        self.stored = 0  # frames written into the memory so far
        self.windows: list[tuple[int, int, int]] = []  # (start, end, n_context) of every chunk written
        self.replayed = 0  # windows the last consolidation covered
        self.updates = 0
        self.update_seconds = 0.0
        self.generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        if self.memory is not None:
            self.memory.reset(seed)  # an episode's seed makes its memory repeatable

    @torch.no_grad()
    def observe(self, frames: np.ndarray, actions: np.ndarray) -> None:
        """Append real frames (T, S, S, 3) uint8 and the actions into them (T, Da); every completed chunk goes
        into the memory."""
        if len(frames) != len(actions) or frames.ndim != 4:
            raise ValueError(f"frames (T, S, S, 3) and actions (T, Da) must match, got {frames.shape}, "
                             f"{actions.shape}")
        if len(frames) == 0:
            return
        self.latents.extend(self.ae.encode(frames_tensor(frames)))
        self.actions.extend(np.asarray(actions, np.float32))
        if self.memory is None:
            return
        tg, tc = self.model.cfg.chunk_frames, self.model.cfg.context_frames
        while len(self.latents) - self.stored >= tg:
            end = self.stored + tg
            start = max(0, self.stored - tc)
            self.windows.append((start, end, self.stored - start))
            self._write(*self.windows[-1])
            self.stored = end

    def _write(self, start: int, end: int, n_context: int) -> None:
        """One local update on frames [start, end) (the first ``n_context`` clean), and on them played backwards
        with ``reverse``."""
        assert self.memory is not None
        window = torch.stack(self.latents[start:end])[None]
        acts = torch.from_numpy(np.stack(self.actions[start:end]))[None]
        t0 = time.perf_counter()
        with torch.enable_grad():
            self.memory.update(window, acts, n_context=n_context)
            if self.reverse:  # the same frames played backwards: the way back, for a static scene
                back, back_acts = reversed_window(window[0], acts[0])
                self.memory.update(back[None], back_acts[None], n_context=n_context)
        self.update_seconds += time.perf_counter() - t0
        self.updates += 1

    def consolidate(self) -> None:
        """``replay`` more passes over every chunk written so far (oldest first), once per batch of new frames:
        the early views, written many chunks ago, are rehearsed before the planner relies on them."""
        if self.memory is None or not self.replay or self.replayed == len(self.windows):
            return
        for _ in range(self.replay):
            for w in self.windows:
                self._write(*w)
        self.replayed = len(self.windows)

    @torch.no_grad()
    def imagine(self, plans: np.ndarray) -> np.ndarray:
        """(K, L, Da) candidate action sequences -> (K, L, S, S, 3) uint8 imagined frames, all K in one batch."""
        if not self.latents:
            raise RuntimeError("observe at least one frame before planning")
        k, length = plans.shape[:2]
        tc = min(self.context, len(self.latents))
        latents = torch.stack(self.latents[-tc:])[None].expand(k, -1, -1, -1, -1)
        past = torch.from_numpy(np.stack(self.actions[-tc:]))[None].expand(k, -1, -1)
        acts = torch.cat([past, torch.from_numpy(plans.astype(np.float32))], dim=1)
        made: list[torch.Tensor] = []
        frames = latents
        done = 0
        while done < length:
            n = min(self.model.cfg.chunk_frames, length - done)
            ctx = frames[:, -tc:]
            window = acts[:, done:done + tc + n]
            new = self.model.generate(ctx, window, self.generator)
            made.append(new)
            frames = torch.cat([frames, new], dim=1)
            done += n
        out = torch.cat(made, dim=1)
        decoded = self.ae.decode(out.flatten(0, 1)).movedim(1, -1)
        return np.ascontiguousarray((decoded * 255).round().byte().numpy().reshape(k, length, *decoded.shape[1:]))

    def decide(self, plans: np.ndarray) -> Decision:
        t0 = time.perf_counter()
        self.consolidate()
        imagined = self.imagine(plans)
        scores = self.scorer.score(imagined[:, -self.score_frames:]).mean(axis=1)
        return Decision(int(np.argmax(scores)), scores, imagined, time.perf_counter() - t0)


@torch.no_grad()
def autoencoder_roundtrip(ae: FrameAutoencoder, frames: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 frames through the autoencoder and back, as uint8: what imagined frames look like."""
    return (ae.decode(ae.encode(frames_tensor(frames))).movedim(1, -1) * 255).round().byte().numpy()


def reversed_window(latents: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, ...) latents and (T, Da) actions into each frame -> the same frames in reverse order with the actions
    into them: the camera's way back over a static scene (reversed frame j came from j - 1 by -actions[T - j]; the
    first reversed frame's own action, never needed as it is context, is zero)."""
    back = latents.flip(0)
    moves = torch.zeros_like(actions)
    moves[1:] = -actions.flip(0)[:-1]
    return back, moves


def train_scorer(scorer: MarkerScorer, frames: np.ndarray, labels: np.ndarray, ae: FrameAutoencoder | None,
                 steps: int, batch: int = 64, lr: float = 1e-3, seed: int = 0,
                 progress: bool = True) -> list[float]:
    """Fit the scorer (binary cross-entropy; with 0/1 labels the classes balanced per batch, graded labels in
    [0, 1] drawn uniformly) on frames and, where ``ae`` is given, the
    same frames through the autoencoder; light brightness jitter. Returns the loss every 100 steps."""
    from tqdm import tqdm

    x = frames_tensor(frames)
    if ae is not None:
        with torch.no_grad():
            x = torch.cat([x, torch.cat([ae.decode(ae.encode(x[i:i + 256])) for i in range(0, len(x), 256)])])
        labels = np.concatenate([labels, labels])
    y = torch.from_numpy(labels)
    pos, neg = torch.nonzero(y > 0.5)[:, 0], torch.nonzero(y < 0.5)[:, 0]
    binary = bool(np.isin(labels, (0.0, 1.0)).all())  # else graded labels (progress in [0, 1]): drawn uniformly
    if binary and (len(pos) == 0 or len(neg) == 0):
        raise ValueError(f"the scorer needs both classes, got {len(pos)} positive and {len(neg)} negative frames")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(scorer.parameters(), lr=lr, weight_decay=1e-4)
    scorer.train()
    history, running = [], []
    for step in tqdm(range(steps), desc="scorer", unit="step", disable=not progress):
        idx = torch.cat([pos[torch.randint(len(pos), (batch // 2,), generator=g)],
                         neg[torch.randint(len(neg), (batch - batch // 2,), generator=g)]]) if binary else \
            torch.randint(len(y), (batch,), generator=g)
        xb = (x[idx] * (0.8 + 0.4 * torch.rand(len(idx), 1, 1, 1, generator=g))).clamp(0, 1)
        loss = F.binary_cross_entropy_with_logits(scorer(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(loss.item())
        if (step + 1) % 100 == 0:
            history.append(float(np.mean(running)))
            running.clear()
    scorer.eval()
    return history
