"""The world model's parts on tiny sizes: autoencoder shapes and scale, the masked loss (only generated frames
count), chunk generation holding the context, and TEMP-LoRA (a fresh memory changes nothing, a local update changes
only the adapters and lowers the loss on the chunk it saw, reset and state round trip)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rdp.schedulers import SchedulerConfig
from world_model.autoencoder import AutoencoderConfig, FrameAutoencoder
from world_model.temp_lora import LoRALinear, TempLoRAConfig, TempLoRAMemory, attach
from world_model.video_diffusion import VideoDenoiser, VideoDiffusion, VideoDiffusionConfig

TINY = VideoDiffusionConfig(latent_channels=4, latent_size=4, action_dim=3, context_frames=2, chunk_frames=2,
                            width=32, depth=2, heads=4,
                            scheduler=SchedulerConfig(num_train_timesteps=20, num_inference_steps=4))


def tiny_batch(B: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, TINY.window, 4, 4, 4, generator=g), torch.randn(B, TINY.window, 3, generator=g))


def test_autoencoder_shapes_scale_and_bad_input():
    ae = FrameAutoencoder(AutoencoderConfig(image_size=16, latent_channels=4, width=8))
    frames = torch.rand(3, 3, 16, 16)
    z = ae.encode(frames)
    assert z.shape == (3, 4, 4, 4)
    assert ae.decode(z).shape == (3, 3, 16, 16)
    scale = ae.fit_scale(frames)
    assert scale > 0 and abs(float(ae.encode(frames).detach().std()) - 1.0) < 1e-4
    assert float(ae.decode(ae.encode(frames)).detach().min()) >= 0.0
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        ae.encode(torch.rand(3, 16, 16, 3))
    with pytest.raises(ValueError, match="multiple of 4"):
        AutoencoderConfig(image_size=18)


def test_autoencoder_learns_to_reconstruct():
    torch.manual_seed(0)
    ae = FrameAutoencoder(AutoencoderConfig(image_size=16, latent_channels=4, width=8))
    frames = torch.rand(8, 3, 16, 16)
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    first = float(ae.reconstruction_loss(frames))
    for _ in range(60):
        opt.zero_grad()
        loss = ae.reconstruction_loss(frames)
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first


def test_masked_loss_ignores_what_the_context_frames_would_be_scored_on():
    """The loss depends on the context frames only as conditioning: with the denoiser's output replaced by zeros
    on the context frames, the loss is unchanged (it is taken over the generated frames alone)."""
    torch.manual_seed(0)
    model = VideoDiffusion(TINY)
    latents, actions = tiny_batch()
    original = model.denoiser.forward

    def context_zeroed(x, t, ctx, a):
        out = original(x, t, ctx, a)
        return out * (~ctx)[:, :, None, None, None]

    base = model.masked_loss(latents, actions, 2, torch.Generator().manual_seed(1))
    model.denoiser.forward = context_zeroed
    masked = model.masked_loss(latents, actions, 2, torch.Generator().manual_seed(1))
    assert torch.equal(base, masked)
    with pytest.raises(ValueError, match="n_context"):
        model.masked_loss(latents, actions, TINY.window)


def test_generation_is_conditioned_on_context_and_actions_and_checks_shapes():
    torch.manual_seed(0)
    model = VideoDiffusion(TINY)
    for p in model.denoiser.conv_out.parameters():  # zero-initialised output: give it a nonzero map to test with
        torch.nn.init.normal_(p, std=0.1)
    latents, actions = tiny_batch()
    ctx = latents[:, :2]
    a = model.generate(ctx, actions, torch.Generator().manual_seed(3))
    assert a.shape == (2, 2, 4, 4, 4)
    assert torch.equal(a, model.generate(ctx, actions, torch.Generator().manual_seed(3)))
    assert not torch.allclose(a, model.generate(ctx + 1.0, actions, torch.Generator().manual_seed(3)))
    assert not torch.allclose(a, model.generate(ctx, actions + 1.0, torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="actions must be"):
        model.generate(ctx, actions[..., :2])
    with pytest.raises(ValueError, match="at least one new frame"):
        model.generate(ctx, actions[:, :2])


def test_training_lowers_the_masked_loss():
    torch.manual_seed(0)
    model = VideoDiffusion(TINY)
    latents, actions = tiny_batch(B=4)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def mean_loss() -> float:
        with torch.no_grad():
            return sum(float(model.masked_loss(latents, actions, 2, torch.Generator().manual_seed(i)))
                       for i in range(8)) / 8

    before = mean_loss()
    for _ in range(80):
        opt.zero_grad()
        model.masked_loss(latents, actions, 2, g).backward()
        opt.step()
    assert mean_loss() < 0.7 * before


def test_fresh_temp_lora_changes_nothing_and_update_touches_only_adapters():
    torch.manual_seed(0)
    model = VideoDiffusion(TINY)
    for p in model.denoiser.conv_out.parameters():
        torch.nn.init.normal_(p, std=0.1)
    latents, actions = tiny_batch()
    ctx = latents[:, :2]
    before = model.generate(ctx, actions, torch.Generator().manual_seed(0))
    base_params = [(p, p.detach().clone()) for p in model.parameters()]
    memory = TempLoRAMemory(model, TempLoRAConfig(rank=4, alpha=4.0, lr=1e-2, steps=1))
    assert len(memory.adapters) == TINY.depth * 4
    assert torch.equal(before, model.generate(ctx, actions, torch.Generator().manual_seed(0)))

    memory.update(latents, actions, n_context=2)
    assert all(torch.equal(p, copy) for p, copy in base_params)  # the base weights are where they were
    assert any(a.up.weight.abs().sum() > 0 for a in memory.adapters)
    assert all(p.grad is None for p in model.parameters())  # nothing left behind for an outer optimiser to see
    assert not torch.equal(before, model.generate(ctx, actions, torch.Generator().manual_seed(0)))

    saved = memory.state()
    memory.reset()
    assert torch.equal(before, model.generate(ctx, actions, torch.Generator().manual_seed(0)))
    memory.load_state(saved)
    assert torch.equal(saved["0.up"], memory.adapters[0].up.weight)
    with pytest.raises(ValueError, match="expected"):
        memory.load_state({"0.up": saved["0.up"]})
    with pytest.raises(ValueError, match="already has"):
        attach(model, TempLoRAConfig())


def test_an_episode_seed_makes_the_memory_repeatable():
    """reset(seed): the adapters' start and the local updates' noise come from the episode's seed, so the same
    episode writes the same memory whatever the process did before; another seed writes another."""
    torch.manual_seed(0)
    model = VideoDiffusion(TINY)
    for p in model.denoiser.conv_out.parameters():
        torch.nn.init.normal_(p, std=0.1)
    latents, actions = tiny_batch(B=1)
    memory = TempLoRAMemory(model, TempLoRAConfig(rank=4, alpha=8.0, lr=5e-3, steps=1))

    def episode(seed: int) -> dict[str, torch.Tensor]:
        memory.reset(seed)
        for _ in range(3):
            memory.update(latents, actions, n_context=2)
        torch.rand(7)  # the process's own random stream moves on between episodes
        return memory.state()

    first, other, again = episode(5), episode(6), episode(5)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["0.down"], other["0.down"])


def test_local_updates_store_the_chunk_they_saw():
    """Repeated local updates on one [context ⊕ chunk] lower the masked loss on it (the memory holds it), while the
    base model's loss on it stays where it was after a reset."""
    torch.manual_seed(0)
    model = VideoDiffusion(TINY)
    for p in model.denoiser.conv_out.parameters():  # as trained: a zero output layer passes no gradient back
        torch.nn.init.normal_(p, std=0.1)
    latents, actions = tiny_batch(B=1)
    memory = TempLoRAMemory(model, TempLoRAConfig(rank=4, alpha=8.0, lr=5e-3, steps=1), seed=1)

    def loss() -> float:
        with torch.no_grad():
            return sum(float(model.masked_loss(latents, actions, 2, torch.Generator().manual_seed(i)))
                       for i in range(16)) / 16

    before = loss()
    for _ in range(60):
        memory.update(latents, actions, n_context=2)
    assert loss() < 0.8 * before
    memory.reset()
    assert abs(loss() - before) < 1e-6
    assert isinstance(model.denoiser.temporal[0].q, LoRALinear)


def test_temp_lora_config_is_checked():
    with pytest.raises(ValueError, match="subset"):
        TempLoRAConfig(targets=("q", "mlp"))
    with pytest.raises(ValueError, match="rank"):
        TempLoRAConfig(rank=0)


def test_spacetime_attention_moves_content_between_pixels_and_frames():
    """A change at one pixel of frame 0 reaches another pixel of frame 2 through space-time attention, and never
    through time-only attention (which mixes frames at the same pixel only)."""
    from world_model.video_diffusion import TemporalAttention

    reached = {}
    for spacetime in (False, True):
        torch.manual_seed(0)
        layer = TemporalAttention(32, heads=4, max_frames=4, pixels=64, spacetime=spacetime)
        x = torch.randn(1, 4, 32, 8, 8)
        y = x.clone()
        y[0, 0, :, 0, 0] += torch.randn(32)  # not a constant shift, which the LayerNorm would remove
        with torch.no_grad():
            out_x, out_y = layer(x), layer(y)
        reached[spacetime] = float((out_y - out_x)[0, 2, :, 7, 7].abs().max())
        assert float((out_y - out_x)[0, 2, :, 0, 0].abs().max()) > 0  # the same pixel: both modes
    assert reached[False] == 0.0 and reached[True] > 1e-6, reached
    with pytest.raises(ValueError, match="attention"):
        VideoDiffusionConfig(attention="space")


def test_motion_estimate_recovers_a_known_camera_shift():
    """Frames that slide by a known number of pixels per unit of action: the fitted map gives that shift (in
    normalised coordinates), for each action axis and its sign, and ignores the axis that never moves the view."""
    from world_model.motion import estimate_motion

    rng = np.random.default_rng(0)
    world = rng.integers(0, 255, (200, 200, 3)).astype(np.uint8)
    S, px_per_unit = 32, np.array([3.0, -2.0])  # action x moves the view 3 px right, action y 2 px up
    pos, frames, actions = np.array([80.0, 80.0]), [], []
    for k in range(60):
        a = np.zeros(3, np.float32) if k == 0 else np.array([*rng.integers(-1, 2, 2), rng.normal()], np.float32)
        pos = pos + px_per_unit * a[:2]
        x, y = int(round(pos[0])), int(round(pos[1]))
        frames.append(world[y:y + S, x:x + S])
        actions.append(a)
    m = estimate_motion(np.stack(frames), np.stack(actions), np.arange(1, 60), radius=4)
    assert m.shape == (2, 3)
    assert m[:, :2] == pytest.approx(np.diag(px_per_unit) * 2 / S, abs=0.01) and abs(m[0, 2]) < 0.01


def test_warp_input_moves_the_last_context_frame_with_the_camera():
    """motion=warp: each frame of the window gets the last context frame shifted by the displacement since it (none
    for that frame itself), with a zero 'inside' share where the shift brought in unseen ground."""
    cfg = VideoDiffusionConfig(latent_channels=2, latent_size=8, action_dim=2, context_frames=2, chunk_frames=2,
                               width=32, depth=1, heads=4, motion="warp")
    den = VideoDenoiser(cfg)
    den.motion.weight.data = torch.tensor([[0.25, 0.0], [0.0, 0.25]])  # one unit of action: 1 latent pixel
    latents = torch.randn(1, 4, 2, 8, 8)
    actions = torch.tensor([[[0.0, 0.0], [5.0, 5.0], [1.0, 0.0], [1.0, 0.0]]])  # frame 1 is the anchor
    context = torch.tensor([[True, True, False, False]])
    moved, inside = den.warped(latents, context, actions)
    moved, inside = moved.reshape(4, 2, 8, 8), inside.reshape(4, 1, 8, 8)
    anchor = latents[0, 1]
    assert torch.allclose(moved[1], anchor, atol=1e-6) and torch.allclose(moved[2][:, :, :7], anchor[:, :, 1:])
    assert torch.allclose(moved[3][:, :, :6], anchor[:, :, 2:], atol=1e-6)
    assert float(inside[3, 0, :, 6:].max()) == 0.0 and float(inside[3, 0, :, :6].min()) == 1.0
    assert torch.allclose(moved[0][:, 5:, 5:], anchor[:, :3, :3], atol=1e-6)  # frame 0: 5 px back along x and y
    eps = den(latents, torch.tensor([[0, 0, 5, 5]]), context, actions)
    assert eps.shape == latents.shape
    with pytest.raises(ValueError, match="same leading context"):
        den(latents.expand(2, -1, -1, -1, -1), torch.zeros(2, 4, dtype=torch.long),
            torch.tensor([[True, True, False, False], [True, False, False, False]]), actions.expand(2, -1, -1))
    with pytest.raises(ValueError, match="motion"):
        VideoDiffusionConfig(motion="flow")


def test_sample_prediction_with_warp_copies_what_stays_in_view_before_any_training():
    """prediction=sample with motion=warp: an untrained model's clean-frame estimate is the last context frame moved
    by the camera's motion, and generation from it reproduces that moved frame where it is in view."""
    cfg = VideoDiffusionConfig(latent_channels=2, latent_size=8, action_dim=2, context_frames=2, chunk_frames=2,
                               width=32, depth=1, heads=4, motion="warp", prediction="sample")
    model = VideoDiffusion(cfg)
    model.denoiser.motion.weight.data = torch.tensor([[0.25, 0.0], [0.0, 0.25]])
    context = torch.randn(1, 2, 2, 8, 8)
    actions = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]]])
    new = model.generate(context, actions, torch.Generator().manual_seed(0))
    anchor = context[0, 1]
    assert torch.allclose(new[0, 0][:, :, :7], anchor[:, :, 1:], atol=1e-4)
    assert torch.allclose(new[0, 1][:, :, :6], anchor[:, :, 2:], atol=1e-4)
    loss = model.masked_loss(torch.randn(3, 4, 2, 8, 8), actions.expand(3, -1, -1), 2)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="prediction"):
        VideoDiffusionConfig(prediction="v")


def test_the_shipped_world_model_loads_and_imagines_a_chunk():
    """checkpoints/world_model/revisit (what world_model.generate uses when no run= is given) loads from its
    safetensors and run.json and generates a chunk of the right shape from frames it has never seen."""
    from world_model.train import frames_tensor, load_world_model, shipped_run

    ae, model, info = load_world_model(shipped_run())
    assert model.cfg.motion == "warp" and model.cfg.prediction == "sample" and info["image_size"] == 32
    frames = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)).astype(np.uint8)
    with torch.no_grad():
        context = ae.encode(frames_tensor(frames))[None]
    actions = torch.zeros(1, model.cfg.window, info["action_dim"])
    new = model.generate(context, actions, torch.Generator().manual_seed(0))
    assert new.shape == (1, model.cfg.chunk_frames, *context.shape[2:]) and torch.isfinite(new).all()
