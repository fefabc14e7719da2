"""The slow-fast grounding model on tiny sizes: shapes in every mode, the closed gate (slow-fast = fast-only), only
text reads the slow tokens, causality, padding, counted FLOPs against the architecture, a training run that needs the
slow tokens, the loss, the frame encoder, and checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from grounding.flops import frame_encoder_flops, lm_prefill_flops
from grounding.model import (
    IGNORE_INDEX,
    MODES,
    FrameEncoder,
    GroundingConfig,
    GroundingModel,
    load,
    save,
)
from grounding.text import InstructionTokenizer
from rdp.checkpoint import CheckpointError
from rdp.encoders import Terminator

TINY = GroundingConfig(vocab_size=20, max_text_len=10, visual_dim=8, width=32, layers=2, heads=2, hybrid_layers=(1,),
                       grid=4, fast_frames=4, fast_grid=2)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def tiny(mode: str = "slowfast", **changes: object) -> GroundingModel:
    return GroundingModel(dataclasses.replace(TINY, mode=mode, **changes)).eval()


def inputs(B: int = 2, T: int = 6, lengths: tuple[int, ...] = (5, 3), seed: int = 0
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frame tokens (B, T, 16, 8), text ids (B, L) ending in [CLS]=2, right-padded with 0, and the mask."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(B, T, TINY.slots, TINY.visual_dim, generator=g)
    L = max(lengths)
    mask = torch.arange(L)[None] < torch.tensor(lengths)[:, None]
    ids = torch.randint(4, TINY.vocab_size, (B, L), generator=g)
    ids[torch.arange(B), torch.tensor(lengths) - 1] = 2
    return frames, ids.masked_fill(~mask, 0), mask


def open_gates(model: GroundingModel, value: float = 1.0) -> None:
    with torch.no_grad():
        for block in model.blocks:
            if block.cross is not None:
                block.cross.gate.fill_(value)


def perturb(model: GroundingModel, scale: float = 0.1) -> None:
    """Move every weight off its init (biases too), so a property cannot hold only thanks to zeros."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("T", [1, 3, 8, 20])
def test_output_shapes(mode: str, T: int) -> None:
    model = tiny(mode)
    out = model(*inputs(T=T))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "task": (2, 3), "region": (2, 3), "force": (2, 3), "height": (2, 3), "grip": (2, 2), "keyframe": (2, 16)}
    x, V = model.hidden_states(*inputs(T=T))
    assert V == (T * TINY.slots if mode == "full" else TINY.num_fast) and x.shape == (2, V + 5, TINY.width)


def test_closed_gate_slowfast_equals_fast_only_with_the_same_weights() -> None:
    slowfast, fast_only = tiny("slowfast"), tiny("fast_only")
    perturb(slowfast)
    slowfast.init_hybrid_from_self_attention()  # closes the gates again
    shared = {k: v for k, v in slowfast.state_dict().items() if k in fast_only.state_dict()}
    fast_only.load_state_dict(shared, strict=True)
    batch = inputs()
    a, b = slowfast(*batch), fast_only(*batch)
    assert all(torch.equal(a[k], b[k]) for k in a)
    open_gates(slowfast, 0.5)
    a = slowfast(*batch)
    assert all((a[k] - b[k]).abs().max() > 1e-4 for k in a)


def test_hybrid_kv_starts_as_the_self_attention_kv() -> None:
    model = tiny("slowfast", layers=3, hybrid_layers=(0, 2))
    d = TINY.width
    hybrid = [b for b in model.blocks if b.cross is not None]
    assert len(hybrid) == 2 and model.blocks[1].cross is None
    for block in hybrid:
        assert torch.equal(block.cross.c_kv.weight, block.attn.c_attn.weight[d:])  # k | v rows
        assert torch.equal(block.cross.c_kv.bias, block.attn.c_attn.bias[d:])
        assert torch.equal(block.cross.c_proj.weight, block.attn.c_proj.weight)
        assert torch.equal(block.cross.gate, torch.zeros(TINY.heads))
        assert block.cross.c_kv.weight.data_ptr() != block.attn.c_attn.weight.data_ptr()  # a copy, not tied


def test_only_text_reads_the_slow_tokens() -> None:
    """A change that pooling averages away changes the slow tokens but not the fast ones: the visual positions'
    hidden states stay put; the readout moves only when the gate is open."""
    model = tiny("slowfast").double()
    perturb(model)
    frames, ids, mask = inputs()
    frames = frames.double()
    changed = frames.clone()
    changed[:, 2, 0] += 1.0  # slots 0 and 1 of frame 2 share a pooled 2x2 cell: its mean is unchanged
    changed[:, 2, 1] -= 1.0
    assert torch.allclose(model.visual.fast(frames), model.visual.fast(changed), atol=1e-12, rtol=0)
    assert not torch.allclose(model.visual.slow(frames), model.visual.slow(changed))
    V = TINY.num_fast
    for gate, readout_moves in ((0.0, False), (0.7, True)):
        open_gates(model, gate)
        a, _ = model.hidden_states(frames, ids, mask)
        b, _ = model.hidden_states(changed, ids, mask)
        assert torch.allclose(a[:, :V], b[:, :V], atol=1e-12, rtol=0)
        out_a, out_b = model(frames, ids, mask), model(changed, ids, mask)
        moved = max(float((out_a[k] - out_b[k]).abs().max().detach()) for k in out_a)
        assert (moved > 1e-4) if readout_moves else (moved < 1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_causal_a_later_token_does_not_change_earlier_positions(mode: str) -> None:
    model = tiny(mode)
    open_gates(model)
    frames, ids, mask = inputs(lengths=(6, 6))
    later = ids.clone()
    later[:, 3] = (ids[:, 3] + 1 - 4) % (TINY.vocab_size - 4) + 4  # another word at text position 3
    a, V = model.hidden_states(frames, ids, mask)
    b, _ = model.hidden_states(frames, later, mask)
    torch.testing.assert_close(a[:, : V + 3], b[:, : V + 3], atol=1e-6, rtol=0)
    assert (a[:, V + 3 :] - b[:, V + 3 :]).abs().amax(dim=(0, 2)).min() > 1e-4  # position 3 and after do change


@pytest.mark.parametrize("mode", MODES)
def test_padding_does_not_change_the_readout(mode: str) -> None:
    model = tiny(mode)
    open_gates(model)
    frames, ids, mask = inputs(B=1, lengths=(4,))
    alone = model(frames, ids, mask)
    # The same instruction in a batch beside a longer one, its padding filled with arbitrary words.
    frames2, ids2, mask2 = inputs(B=2, lengths=(4, 9), seed=5)
    frames2[0], ids2[0, :4] = frames[0], ids[0]
    ids2[0, 4:] = torch.arange(5) + 7
    padded = model(frames2, ids2, mask2)
    for k in alone:
        torch.testing.assert_close(padded[k][:1], alone[k], atol=1e-5, rtol=0)


def expected_lm_flops(cfg: GroundingConfig, T: int, L: int) -> int:
    """Matmul and attention FLOPs of one prefill, batch 1, derived from the architecture."""
    d, N, M = cfg.width, cfg.slots, cfg.num_fast
    flops = 0
    if cfg.mode != "full":  # fast tokens: project M pooled tokens, embed fast_frames group times
        flops += 2 * cfg.visual_dim * d * M + 2 * d * d * cfg.fast_frames
    if cfg.mode != "fast_only":  # slow tokens: project T * N tokens, embed T frame times
        flops += 2 * cfg.visual_dim * d * T * N + 2 * d * d * T
    S = (T * N if cfg.mode == "full" else M) + L
    flops += cfg.layers * (24 * d * d * S + 4 * S * S * d)  # qkv 6d², out 2d², MLP 16d² per token; QK^T and AV
    if cfg.mode == "slowfast":  # per hybrid layer: K/V of every slow token, L text queries, output projection
        flops += len(cfg.hybrid_layers) * (4 * d * d * T * N + 4 * L * T * N * d + 2 * d * d * L)
    return flops + 2 * d * sum(cfg.head_sizes.values())


@pytest.mark.parametrize("mode", MODES)
def test_counted_flops_follow_the_architecture(mode: str) -> None:
    model = tiny(mode)
    for T in (2, 16, 40):
        assert lm_prefill_flops(model, T, text_len=7) == expected_lm_flops(model.cfg, T, 7)


def test_full_attention_flops_grow_far_faster_than_slowfast() -> None:
    """Default sizes, 16 -> 128 frames, a 24-token instruction: in the sequence every frame costs 16 tokens through
    every layer and attention grows quadratically; as slow tokens it costs one K/V projection per hybrid layer."""
    counted = {}
    for mode in ("slowfast", "full"):
        model = GroundingModel(GroundingConfig(mode=mode)).eval()
        counted[mode] = [lm_prefill_flops(model, T, 24) for T in (16, 128)]
        assert counted[mode] == [expected_lm_flops(model.cfg, T, 24) for T in (16, 128)]
    growth = {mode: f[1] / f[0] - 1.0 for mode, f in counted.items()}
    assert growth["full"] > 10.0 * growth["slowfast"]  # +1563 % against +145 %
    assert counted["slowfast"][1] < counted["full"][0]  # 128 frames slow-fast cost less than 16 frames full
    fast_only = GroundingModel(GroundingConfig(mode="fast_only")).eval()
    assert lm_prefill_flops(fast_only, 16, 24) == lm_prefill_flops(fast_only, 128, 24)  # a fixed token budget


CODES = torch.randn(3, 8, generator=torch.Generator().manual_seed(123))


def detail_batch(B: int, T: int, g: torch.Generator, task: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Videos whose task shows only in detail: in every frame one random 2x2 cell carries +code in one slot and
    -code / 3 in the other three, so the cell's mean -- all a fast token sees -- is the same for every task."""
    y = torch.randint(0, 3, (B,), generator=g)
    y = y if task is None else torch.full_like(y, task)
    x = 0.1 * torch.randn(B, T, 2, 2, 2, 2, 8, generator=g)  # (B, T, cell row, row in cell, cell col, col in cell, C)
    one = torch.nn.functional.one_hot(torch.randint(0, 4, (B, T), generator=g), 4).bool()
    pattern = torch.where(one, 1.0, -1.0 / 3).view(B, T, 2, 2, 1) * CODES[y][:, None, None, None]  # (B, T, 2, 2, C)
    cell = torch.randint(0, 4, (B, T), generator=g)
    b, t = torch.meshgrid(torch.arange(B), torch.arange(T), indexing="ij")
    x[b, t, cell // 2, :, cell % 2, :] += pattern
    return x.reshape(B, T, 16, 8), y


def test_slowfast_learns_a_task_that_only_the_slow_tokens_show() -> None:
    T, B = 4, 64
    ids, mask = torch.tensor([[5, 6, 2]]).expand(B, -1), torch.ones(B, 3, dtype=torch.bool)
    model = tiny("slowfast").train()
    # The same video but for the task: equal fast tokens (up to rounding), different slow ones.
    wipe, _ = detail_batch(8, T, torch.Generator().manual_seed(2), task=0)
    lift, _ = detail_batch(8, T, torch.Generator().manual_seed(2), task=2)
    assert torch.allclose(model.visual.fast(wipe), model.visual.fast(lift), atol=1e-6)
    assert not torch.allclose(model.visual.slow(wipe), model.visual.slow(lift), atol=1e-2)

    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(150):
        x, y = detail_batch(B, T, g)
        out = model(x, ids, mask)
        targets = {k: torch.full((B,), IGNORE_INDEX) for k in out} | {"task": y}
        loss, parts = model.loss(out, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = detail_batch(256, T, torch.Generator().manual_seed(1))
    with torch.no_grad():
        predicted = model(x, ids[:1].expand(256, -1), mask[:1].expand(256, -1))["task"].argmax(1)
    accuracy = float((predicted == y).float().mean())
    assert accuracy > 0.9
    gates = [float(b.cross.gate.detach().abs().max()) for b in model.blocks if b.cross is not None]
    assert min(gates) > 0.01  # it learned to open the gate


def test_loss_ignores_targets_that_do_not_apply() -> None:
    model = tiny()
    out = model(*inputs())
    targets = {k: torch.full((2,), IGNORE_INDEX) for k in out} | {"task": torch.tensor([0, 2]),
                                                                  "keyframe": torch.tensor([IGNORE_INDEX, 15])}
    total, parts = model.loss(out, targets)
    assert math.isfinite(float(total.detach())) and float(parts["region"]) == 0.0
    expected = torch.nn.functional.cross_entropy(out["task"], targets["task"]) + torch.nn.functional.cross_entropy(
        out["keyframe"][1:], targets["keyframe"][1:])
    torch.testing.assert_close(total, expected)
    with pytest.raises(ValueError, match="lacks 'grip'"):
        model.loss(out, {k: v for k, v in targets.items() if k != "grip"})
    with pytest.raises(ValueError, match=r"targets\['grip'\] has \[2\]: classes are 0..1"):
        model.loss(out, targets | {"grip": torch.tensor([0, 2])})


def test_bad_inputs_are_named() -> None:
    model = tiny()
    frames, ids, mask = inputs()
    with pytest.raises(ValueError, match="N=16, C=8"):
        model(frames[:, :, :9], ids, mask)
    with pytest.raises(ValueError, match="right-padded"):
        model(frames, ids, mask.flip(1))
    with pytest.raises(ValueError, match="vocab_size=20"):
        model(frames, ids + 100, mask)
    with pytest.raises(ValueError, match="max_text_len=10"):
        model(frames, ids.repeat(1, 3), mask.repeat(1, 3))
    with pytest.raises(ValueError, match="hybrid_layers"):
        GroundingConfig(layers=2, hybrid_layers=(2,))
    with pytest.raises(ValueError, match="mode must be one of"):
        GroundingConfig(mode="slow")


def test_frame_encoder_pools_the_backbone_map() -> None:
    backbone = Terminator(in_channels=3, width=8, depth=1, slow_hidden=8, slow_layers=2, gate_order=2, patch_size=4)
    encoder = FrameEncoder(backbone, grid=4).eval()
    images = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        tokens = encoder(images)
        assert tokens.shape == (2, 3, 16, 8) and encoder.feature_dim == 8
        fmap = backbone.feature_map(images[1, 2].float()[None] / 255.0 * 2.0 - 1.0)  # (1, 8, 8, 8)
        expected = torch.nn.functional.adaptive_avg_pool2d(fmap, 4).flatten(2).transpose(1, 2)[0]
        torch.testing.assert_close(tokens[1, 2], expected)
        torch.testing.assert_close(encoder(images.float() / 255.0), tokens)
        assert FrameEncoder.resnet(width=4).eval()(images).shape == (2, 3, 16, 16)
    assert frame_encoder_flops(encoder, (32, 32)) > 0
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        encoder(images[0])


@pytest.fixture(scope="module")
def tokenizer() -> InstructionTokenizer:
    return InstructionTokenizer.train(["wipe the left side gently", "peel the tape", "lift the box high"],
                                      vocab_size=60)


def test_save_load_round_trip(tokenizer: InstructionTokenizer, tmp_path: Path) -> None:
    model = tiny(vocab_size=tokenizer.vocab_size)
    perturb(model)
    save(model, tokenizer, tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}
    loaded, loaded_tok = load(tmp_path / "ckpt")
    assert loaded.cfg == model.cfg and not loaded.training
    ids, mask = tokenizer.encode_batch(["lift the box", "wipe gently"], max_len=10)
    assert all(torch.equal(a, b) for a, b in zip((ids, mask), loaded_tok.encode_batch(["lift the box", "wipe gently"],
                                                                                       max_len=10), strict=True))
    frames = torch.randn(2, 5, 16, 8)
    a, b = model(frames, ids, mask), loaded(frames, ids, mask)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_load_names_what_is_wrong(tokenizer: InstructionTokenizer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size is 20"):
        save(tiny(), tokenizer, tmp_path / "bad")
    directory = save(tiny(vocab_size=tokenizer.vocab_size), tokenizer, tmp_path / "ckpt").parent / "ckpt"
    config_path = directory / "config.json"
    header = json.loads(config_path.read_text())

    header["config"]["width"] = 64  # a config that does not match the weights
    config_path.write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match=r"checkpoint has \S+ \[\d+(, \d+)*\], model expects \["):
        load(directory)
    header["config"]["width"], header["config"]["depth"] = 32, 3
    config_path.write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match=r"unknown fields \['depth'\]"):
        load(directory)
    del header["config"]["depth"]
    config_path.write_text(json.dumps(header))
    load(directory)  # repaired

    (directory / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load(directory)
    tokenizer.save(directory / "tokenizer.json")
    (directory / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load(directory)
    with pytest.raises(FileNotFoundError, match="nothere"):
        load(tmp_path / "nothere")
