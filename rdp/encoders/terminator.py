"""Terminator: a slow-fast perception backbone built on the HyperZ·Z·W operator.

Written from the ideas of Zhang 2024, "HyperZ·Z·W Operator Connects Slow-Fast Networks for Full Context
Interaction" (arXiv 2401.17948); not a port of the public code.

Glossary: ``B`` batch, ``C`` channels, ``S`` the spatial shape, ``(H, W)`` for images (``dims=2``) or ``(L,)``
for sequences (``dims=1``), ``D = dims``, ``N = prod(S)`` positions, ``k`` a local kernel size.

The pieces, top to bottom:

* ``SlowNet`` -- a coordinate MLP (a multiplicative filter network with Gabor filters, MAGNet-style). It maps a
  grid of normalised coordinates to one kernel value per channel, so a kernel of any size is generated at run
  time from a fixed, small set of parameters: the "slow" weights.
* ``HyperZZW`` -- the operator. The slow net's hyper-kernel ``K`` is convolved depth-wise with the hidden
  activations ``Z`` (``global``: K spans every relative offset of the map, so each position sees all others;
  ``local``: a k x k window), which gives per-sample, per-position fast weights ``W = K * Z``. The branch
  output is ``W ⊙ phi(Z)``, with ``phi`` a 1x1 conv: the fast weights depend on the context, the slow ones
  do not. ``depthwise_conv`` applies K by a dense Toeplitz matmul, a direct conv or an FFT, whichever is
  fastest on CPU for the shapes at hand (all three are exact and tested against each other).
* ``RecursiveGatedUnit`` -- recursive multiplicative gating (``p <- lin(p) ⊙ dwconv(q_i)``), which raises the
  interaction order by one per step.
* ``SlowFastBlock`` -- global + local (3, 5, 7) HyperZ·Z·W branches, the gated unit and a pointwise branch,
  concatenated, standardised per branch, then squeezed by a 1x1 bottleneck. No residual connection.
* ``Terminator`` -- stem, a stack of blocks at one resolution (no pooling inside), mean over positions, head.

Every normalisation is an affine-free per-sample standardisation (``F.group_norm`` without weights), so the
output of a sample never depends on the rest of the batch, in training or eval mode.

The slow neural loss is a local feedback error between consecutive blocks' hyper-kernels: block ``l``'s
(standardised) kernel is pulled towards block ``l + 1``'s, which is held fixed. It is computed in ``forward``
and read with ``Terminator.slow_loss()``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_CONV_FN = {1: F.conv1d, 2: F.conv2d}


def standardize(x: torch.Tensor, groups: int = 1, eps: float = 1e-5) -> torch.Tensor:
    """Affine-free per-sample standardisation of (B, C, *S) over each group of C // groups channels and S."""
    return F.group_norm(x, groups, eps=eps)


def coordinate_grid(sizes: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(prod(sizes), D) coordinates in [-1, 1] on a regular grid, row-major (the last axis varies fastest)."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) for n in sizes]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(sizes))


DENSE_MAX_POSITIONS = 256  # up to 16x16 the dense Toeplitz route trains fastest on CPU


def depthwise_conv(z: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """'Same' depth-wise convolution of z (B, C, *S) with an odd-sized kernel (C, *K): (B, C, *S).

    Three exact routes to one result, picked for CPU speed. When training on small maps, one dense (C, N, N)
    Toeplitz matmul has by far the cheapest backward pass (a batch amortises building it). Otherwise small
    kernels go to a direct conv and large (global) ones to an FFT.
    """
    batch, spatial, kernel_shape = z.shape[0], tuple(z.shape[2:]), tuple(kernel.shape[1:])
    if any(k % 2 == 0 for k in kernel_shape):
        raise ValueError(f"depthwise_conv needs odd kernel sizes (a centre tap), got {kernel_shape}")
    if torch.is_grad_enabled() and batch >= 4 and math.prod(spatial) <= DENSE_MAX_POSITIONS:
        return _toeplitz_conv(z, kernel)
    if max(kernel_shape) <= 9:
        conv = _CONV_FN[len(spatial)]  # cross-correlation: flip the kernel to convolve
        flipped = kernel.flip(tuple(range(1, kernel.ndim))).unsqueeze(1)
        return conv(z, flipped, padding=[k // 2 for k in kernel_shape], groups=z.shape[1])
    return _fft_conv(z, kernel)


def _toeplitz_conv(z: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depth-wise conv as one batched matmul with a dense (C, N, N) Toeplitz matrix built from views."""
    batch, channels, *spatial = z.shape
    axes = tuple(range(1, kernel.ndim))
    # Fit the kernel to the (2n - 1)-wide canvas of all relative offsets (taps beyond it never touch the map).
    pad = []
    for n, k in zip(reversed(spatial), reversed(kernel.shape[1:]), strict=True):
        pad += [n - 1 - k // 2] * 2
    canvas = F.pad(kernel, pad).flip(axes)  # (C, *(2S - 1)), flipped so that T[n-1-p, m] = canvas[p + m]
    toeplitz = canvas
    for axis, n in zip(axes, spatial, strict=True):
        toeplitz = toeplitz.unfold(axis, n, 1)  # windows over each axis: (C, *S_flipped_out, *S_in)
    toeplitz = toeplitz.reshape(channels, math.prod(spatial), math.prod(spatial))
    out = torch.bmm(toeplitz, z.reshape(batch, channels, -1).permute(1, 2, 0))  # (C, N, B)
    return out.permute(2, 0, 1).reshape(z.shape).flip(tuple(range(2, z.ndim)))


def _fast_fft_size(n: int) -> int:
    """Smallest m >= n whose only prime factors are 2, 3 and 5."""
    m = n
    while True:
        rest = m
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += 1


def _fft_conv(z: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    spatial, kernel_shape = z.shape[2:], kernel.shape[1:]
    dims = len(spatial)
    # >= n + k // 2 points keep the 'same' window free of circular wrap-around; 5-smooth sizes are fast.
    fft_shape = tuple(_fast_fft_size(n + k // 2) for n, k in zip(spatial, kernel_shape, strict=True))
    z_f = torch.fft.rfftn(z, s=fft_shape, dim=tuple(range(2, 2 + dims)))
    k_f = torch.fft.rfftn(kernel, s=fft_shape, dim=tuple(range(1, 1 + dims)))
    full = torch.fft.irfftn(z_f * k_f, s=fft_shape, dim=tuple(range(2, 2 + dims)))
    for axis, (n, k) in enumerate(zip(spatial, kernel_shape, strict=True), start=2):
        full = full.narrow(axis, k // 2, n)  # output p = sum_m z[m] K[p - m + k // 2]
    return full


class SlowNet(nn.Module):
    """Coordinate MLP that generates a hyper-kernel: (N, D) coordinates -> (N, out_features) values.

    h_1 = g_1(c);  h_{i+1} = (A_i h_i + b_i) ⊙ g_{i+1}(c);  out = A_o h_L + b_o,
    with Gabor filters g_i(c) = exp(-gamma_i/2 * |c - mu_i|^2) * sin(omega_i c + phi_i). Multiplying L filters
    sums their frequencies, so each layer's are drawn with std ``max_frequency / sqrt(L)`` (radians per unit
    of the [-1, 1] coordinate range).
    """

    def __init__(
        self, dims: int, out_features: int, hidden: int = 16, num_layers: int = 3, max_frequency: float = 8.0
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"SlowNet num_layers must be >= 1, got {num_layers}")
        self.omega = nn.Parameter(torch.randn(num_layers, dims, hidden) * max_frequency / math.sqrt(num_layers))
        self.phase = nn.Parameter(torch.empty(num_layers, hidden).uniform_(-math.pi, math.pi))
        self.center = nn.Parameter(torch.empty(num_layers, dims, hidden).uniform_(-1.0, 1.0))
        # Envelopes start wide (gamma in [0.5, 4]): a kernel is free to stay global or to localise.
        self.log_gamma = nn.Parameter(torch.empty(num_layers, hidden).uniform_(math.log(0.5), math.log(4.0)))
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(num_layers - 1))
        self.out = nn.Linear(hidden, out_features)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, out_features)."""
        # |c - mu|^2 = |c|^2 - 2 c.mu + |mu|^2, without materialising (N, L, D, hidden) differences.
        sq_dist = (
            coords.square().sum(dim=1)[:, None, None]
            - 2.0 * torch.einsum("nd,ldh->nlh", coords, self.center)
            + self.center.square().sum(dim=1)
        ).clamp_min(0.0)  # (N, L, hidden)
        envelope = torch.exp(-0.5 * self.log_gamma.exp() * sq_dist)
        filters = envelope * torch.sin(torch.einsum("nd,ldh->nlh", coords, self.omega) + self.phase)
        h = filters[:, 0]
        for i, linear in enumerate(self.hidden, start=1):
            h = linear(h) * filters[:, i]
        return self.out(h)


class HyperZZW(nn.Module):
    """One HyperZ·Z·W branch: z (B, C, *S) and its projection phi(z) (B, C, *S) -> (B, C, *S).

    The slow net's hyper-kernel K is convolved depth-wise with z, giving per-sample, per-position fast
    weights W = K * z; the output is W ⊙ phi(z). ``kernel_size=None`` is the global branch: K covers every
    relative offset of the current map, (2H-1, 2W-1), so each output sees the whole input. Otherwise K is k^D.
    Either way K is generated for the actual input shape, so any size works.
    """

    def __init__(self, dims: int, channels: int, kernel_size: int | None, slow_hidden: int, slow_layers: int) -> None:
        super().__init__()
        if kernel_size is not None and (kernel_size < 1 or kernel_size % 2 == 0):
            raise ValueError(f"HyperZZW kernel_size must be odd and positive (a centre tap), got {kernel_size}")
        self.dims, self.channels, self.kernel_size = dims, channels, kernel_size
        # Local kernels may use up to their Nyquist frequency; the global one stays smooth.
        max_frequency = 8.0 if kernel_size is None else 0.5 * math.pi * max(kernel_size - 1, 1)
        self.slow_net = SlowNet(dims, channels, slow_hidden, slow_layers, max_frequency)
        self._cache_key: tuple | None = None
        self._cache_kernel: torch.Tensor | None = None

    def kernel_shape(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        if self.kernel_size is None:
            return tuple(2 * n - 1 for n in spatial)
        return (self.kernel_size,) * self.dims

    def hyper_kernel(self, spatial: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """(C, *kernel_shape) hyper-kernel for a map of shape ``spatial``, divided by sqrt(#taps).

        Without gradients the kernel depends only on its shape and the slow weights, so it is reused until
        either changes (in-place updates such as ``optimizer.step`` or ``load_state_dict`` bump ``_version``).
        """
        shape = self.kernel_shape(spatial)
        if torch.is_grad_enabled():
            return self._generate(shape, like)
        key = (shape, like.device, like.dtype, tuple((p.data_ptr(), p._version) for p in self.slow_net.parameters()))
        if key != self._cache_key:
            self._cache_key, self._cache_kernel = key, self._generate(shape, like)
        return self._cache_kernel

    def _generate(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        coords = coordinate_grid(shape, like.device, like.dtype)
        kernel = self.slow_net(coords).t().reshape(self.channels, *shape)
        return kernel / math.sqrt(math.prod(shape))

    def forward(self, z: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, *S), (B, C, *S) -> output (B, C, *S) and the hyper-kernel (C, *kernel_shape) used."""
        kernel = self.hyper_kernel(tuple(z.shape[2:]), z)
        return depthwise_conv(z, kernel) * value, kernel


class RecursiveGatedUnit(nn.Module):
    """Recursive gating, (B, (order + 1) C, *S) projected input -> (B, C, *S).

    The input splits into p and q_1..q_order; q is mixed locally by a depth-wise conv, then
    p <- q_1 ⊙ p;  p <- q_{i+1} ⊙ mix_i(p): each step raises the order of interaction by one.
    """

    def __init__(self, dims: int, channels: int, order: int = 3, kernel_size: int = 3) -> None:
        super().__init__()
        if order < 1:
            raise ValueError(f"RecursiveGatedUnit order must be >= 1, got {order}")
        self.channels, self.order = channels, order
        conv = _CONV[dims]
        self.dwconv = conv(
            channels * order, channels * order, kernel_size, padding=kernel_size // 2, groups=channels * order
        )
        self.mix = nn.ModuleList(conv(channels, channels, 1) for _ in range(order - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = x.tensor_split([self.channels], dim=1)
        gates = self.dwconv(q).chunk(self.order, dim=1)
        p = p * gates[0]
        for mix, gate in zip(self.mix, gates[1:], strict=True):
            p = mix(p) * gate
        return p


class SlowFastBlock(nn.Module):
    """Multi-branch slow-fast encoding block, (B, C, *S) -> (B, C, *S), with no residual connection.

    Branches: HyperZ·Z·W (global and/or local), recursive gating, pointwise. Every 1x1 read of z the branches
    need comes from one conv (``read``); the outputs are concatenated, standardised per branch and squeezed
    back to C channels by the 1x1 ``bottleneck``.
    """

    def __init__(
        self,
        dims: int,
        channels: int,
        local_kernel_sizes: tuple[int, ...],
        use_global_branch: bool,
        slow_hidden: int,
        slow_layers: int,
        gate_order: int,
    ) -> None:
        super().__init__()
        sizes: list[int | None] = ([None] if use_global_branch else []) + list(local_kernel_sizes)
        self.hyper = nn.ModuleDict(
            {
                ("global" if k is None else f"local{k}"): HyperZZW(dims, channels, k, slow_hidden, slow_layers)
                for k in sizes
            }
        )
        self.gated = RecursiveGatedUnit(dims, channels, gate_order)
        # Channels of the shared 1x1 read: one value per HyperZ·Z·W branch | gated-unit input | pointwise.
        self.read_sizes = [channels] * len(self.hyper) + [channels * (gate_order + 1), channels]
        self.read = _CONV[dims](channels, sum(self.read_sizes), 1)
        self.num_branches = len(self.hyper) + 2
        self.bottleneck = _CONV[dims](channels * self.num_branches, channels, 1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(B, C, *S) -> (B, C, *S) and {branch name: hyper-kernel (C, *kernel_shape)}."""
        *values, gate_input, pointwise = self.read(z).split(self.read_sizes, dim=1)
        branches, kernels = [], {}
        for (name, op), value in zip(self.hyper.items(), values, strict=True):
            out, kernels[name] = op(z, value)
            branches.append(out)
        branches.append(self.gated(gate_input))
        branches.append(F.gelu(pointwise))
        # Products of activations differ wildly in scale per branch: standardise each before mixing.
        mixed = standardize(torch.cat(branches, dim=1), groups=self.num_branches)
        return F.gelu(standardize(self.bottleneck(mixed))), kernels


class Terminator(nn.Module):
    """Terminator backbone: (B, C_in, H, W) (or (B, C_in, L) with ``dims=1``) -> (B, num_classes) logits.

    With ``num_classes=None`` it returns (B, feature_dim) features (the mean over positions of the last block).
    ``patch_size > 1`` makes the stem a non-overlapping patchify conv, for large images (e.g. 4 on 96x96).
    ``slow_loss()`` returns ``slow_loss_weight`` times the slow neural loss of the last forward pass; add it to
    the task loss. It is an exact zero when ``use_slow_loss=False``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int | None = None,
        width: int = 32,
        depth: int = 3,
        dims: int = 2,
        local_kernel_sizes: tuple[int, ...] = (3, 5, 7),
        use_global_branch: bool = True,
        use_slow_loss: bool = True,
        slow_loss_weight: float = 0.1,
        slow_hidden: int = 16,
        slow_layers: int = 3,
        gate_order: int = 3,
        patch_size: int = 1,
    ) -> None:
        super().__init__()
        if dims not in _CONV:
            raise ValueError(f"Terminator dims must be 1 (sequences) or 2 (images), got {dims}")
        if depth < 1 or width < 1 or patch_size < 1:
            raise ValueError(f"Terminator needs depth, width, patch_size >= 1, got {depth}, {width}, {patch_size}")
        if not use_global_branch and not local_kernel_sizes:
            raise ValueError("Terminator needs at least one HyperZ·Z·W branch (global or local)")
        self.in_channels, self.dims, self.feature_dim = in_channels, dims, width
        self.use_slow_loss, self.slow_loss_weight = use_slow_loss, slow_loss_weight
        if patch_size == 1:
            self.stem = _CONV[dims](in_channels, width, 3, padding=1)
        else:
            self.stem = _CONV[dims](in_channels, width, patch_size, stride=patch_size)
        self.blocks = nn.ModuleList(
            SlowFastBlock(
                dims, width, tuple(local_kernel_sizes), use_global_branch, slow_hidden, slow_layers, gate_order
            )
            for _ in range(depth)
        )
        self.head = nn.Linear(width, num_classes) if num_classes is not None else None
        self._slow_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, *S) -> (B, num_classes) logits, or (B, feature_dim) features if num_classes is None."""
        features = self.feature_map(x).flatten(2).mean(dim=2)  # (B, C)
        return features if self.head is None else self.head(features)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, *S) -> (B, feature_dim, *S') map of the last block, before the mean over positions.

        ``S' = S // patch_size``. For consumers that need to know *where* (e.g. tokens per image region); the
        slow loss of this pass is recorded as in ``forward``.
        """
        if x.ndim != self.dims + 2 or x.shape[1] != self.in_channels:
            expected = "(B, C, L)" if self.dims == 1 else "(B, C, H, W)"
            raise ValueError(
                f"Terminator(dims={self.dims}) expects input {expected} with C={self.in_channels}, "
                f"got shape {tuple(x.shape)}"
            )
        z = F.gelu(standardize(self.stem(x)))
        kernels = []
        for block in self.blocks:
            z, block_kernels = block(z)
            kernels.append(block_kernels)
        # The slow loss only matters for training; inference skips its cost.
        self._slow_loss = self._feedback_loss(kernels) if self.use_slow_loss and self.training else None
        return z

    @staticmethod
    def _feedback_loss(kernels: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Mean squared gap between each block's standardised hyper-kernels and the next block's (held fixed)."""
        terms = []
        for here, there in zip(kernels[:-1], kernels[1:], strict=True):
            for name, kernel in here.items():
                target = there[name].detach()
                terms.append(F.mse_loss(_unit(kernel), _unit(target)))
        if not terms:  # one block: nothing to compare, keep the graph so callers can always backprop
            return next(iter(kernels[0].values())).sum() * 0.0
        return torch.stack(terms).mean()

    def slow_loss(self) -> torch.Tensor:
        """Weighted slow neural loss of the last forward pass: a scalar (an exact 0 when disabled)."""
        if not self.use_slow_loss:
            return torch.zeros((), device=self.stem.weight.device)
        if self._slow_loss is None:
            raise RuntimeError("Terminator.slow_loss() needs a forward pass in training mode first")
        return self.slow_loss_weight * self._slow_loss


def _unit(kernel: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Zero-mean, unit-variance copy of a kernel, so the slow loss compares shapes, not gains."""
    return (kernel - kernel.mean()) / (kernel.std() + eps)
