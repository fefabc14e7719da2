"""dataset.features: the policy features are computed from raw streams when a dataset is loaded, by the function
the running policy calls, so recordings without derived streams train and older recordings' stored features agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dataset.features import FEATURE_STREAMS, lowdim_features
from dataset.format import build_training_set, list_episodes, load_stream, load_training_episode, read_meta
from dataset.recorder import EpisodeMeta, EpisodeRecorder
from sensors.embedding import TactileEmbedding

# One wipe episode recorded by teleop.record_expert when it still stored the tactile embedding (``tactile_emb``)
# next to the marker field: 60 control steps (50 Hz) in contact with the table; meta.json says how it was made.
STORED = Path(__file__).resolve().parent / "recordings" / "wipe_stored_tactile_emb"
STATE_HZ = 250.0  # teleop.collect records the robot node's state, tactile and wrench streams at its loop rate


def test_recomputed_tactile_embedding_equals_the_stored_one() -> None:
    ep = list_episodes(STORED)[0]
    raw = {name: load_stream(ep, name)[1] for name in (*FEATURE_STREAMS, "tactile_emb")}
    stored = raw.pop("tactile_emb")  # (S, P, 15) float32, as recorded
    assert np.abs(stored).max() > 0.5  # the pads are pressed: a real comparison, not one of zeros
    features = lowdim_features(raw, TactileEmbedding.load("default"))
    np.testing.assert_allclose(features["tactile"], stored.reshape(len(stored), -1), rtol=1e-5, atol=1e-5)


def test_training_data_ignores_a_stored_feature_and_recomputes_it(tmp_path: Path) -> None:
    from rdp.data import REQUIRED_STREAMS, load_episodes

    assert "tactile_emb" not in REQUIRED_STREAMS
    episodes = load_episodes(STORED, 25.0)
    assert episodes.num_pads == 3 and episodes.lengths.tolist() == [30]
    build_training_set(STORED, 25.0, tmp_path / "built", streams=["tactile_emb", "tcp_pos"])  # the same clock
    stored = load_training_episode(tmp_path / "built" / "episode_000000.npz")["tactile_emb"]
    np.testing.assert_allclose(episodes.features["tactile"], stored.reshape(30, -1), rtol=1e-5, atol=1e-5)
    assert episodes.features["tactile_load"].shape == (30, 9)


def test_the_runtime_calls_the_same_feature_function() -> None:
    """sim.eval's adapter, the slow node and the fast node all take features through the policy API's planner and
    decoder, which call the one function training used."""
    import rdp.api
    import rdp.runtime.fast
    import rdp.runtime.slow

    assert rdp.api.lowdim_features is lowdim_features
    for module in (rdp.runtime.fast, rdp.runtime.slow):
        assert not hasattr(module, "lowdim_features"), f"{module.__name__} computes features on its own"
    assert "self.planner.features(" in Path(rdp.runtime.slow.__file__).read_text()
    assert "self.decoder.features(" in Path(rdp.runtime.fast.__file__).read_text()


def collect_style_recording(root: Path, episodes: int = 2) -> Path:
    """Episodes shaped as ``teleop.collect`` records them, from the stored episode's raw streams: state, tactile
    and wrench at 250 Hz (each 50 Hz sample held for 5 ticks), float32 commands at 50 Hz, a clutch stream at 20 Hz,
    and no derived stream at all."""
    ep = list_episodes(STORED)[0]
    meta = read_meta(ep)
    raw = {name: load_stream(ep, name, meta) for name in (*FEATURE_STREAMS, "scene", "action")}
    t0 = raw["action"][0][0]
    rec = EpisodeRecorder(root, flush_interval_s=1e9)
    for k in range(episodes):
        rec.begin(EpisodeMeta(task="wipe", seed=k, user={"operator": "scripted"}))
        n = len(raw["action"][0])
        for i in range(n):
            t = round(raw["action"][0][i] - t0, 6)
            for tick in range(5):
                stamp = round(t + tick / STATE_HZ, 6)
                for name in (*FEATURE_STREAMS, "scene"):
                    rec.append(name, stamp, raw[name][1][i])
                if (i * 5 + tick) % 12 == 0:
                    rec.append("clutch", stamp, np.ones(1, np.uint8))
            rec.append("action", t, raw["action"][1][i].astype(np.float32))
        rec.commit(success=True)
    return root


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return collect_style_recording(tmp_path_factory.mktemp("collect") / "wipe")


def test_a_recording_without_derived_streams_builds_training_windows(collected: Path) -> None:
    from rdp.data import gather, load_episodes, make_windows

    assert "tactile_emb" not in read_meta(list_episodes(collected)[0])["streams"]
    episodes = load_episodes(collected, 25.0)
    assert episodes.lengths.tolist() == [30, 30] and (episodes.num_arms, episodes.num_pads) == (1, 3)
    _, stored = load_stream(list_episodes(STORED)[0], "tactile_emb")
    np.testing.assert_allclose(episodes.features["tactile"][:30], stored[::2].reshape(30, -1), rtol=1e-5, atol=1e-5)
    windows = make_windows(episodes, obs_steps=2, horizon=16)
    batch = gather(episodes, windows, np.arange(8), ("proprio", "tactile"), "tactile")
    assert batch["obs"]["tactile"].shape == (8, 2, 45) and batch["cond"].shape == (8, 16, 45)


def test_a_recording_without_derived_streams_trains(collected: Path, tmp_path: Path) -> None:
    from rdp.train import DiffusionSizes, MethodConfig, TokenizerSizes, TrainConfig, train

    torch.set_num_threads(1)
    method = MethodConfig(
        name="rdp", obs_keys=("proprio", "tactile"), cond_key="tactile",
        tokenizer=TokenizerSizes(latent_steps=4, latent_channels=4, encoder_hidden=16, decoder_hidden=16),
        diffusion=DiffusionSizes(down_dims=(16, 32), diffusion_step_embed_dim=16, num_train_timesteps=20,
                                 num_inference_steps=2),
        tokenizer_steps=2, policy_steps=2, warmup_steps=1,
    )
    out = tmp_path / "run"
    train(TrainConfig(task="wipe", method=method, data=str(collected), out=str(out), horizon=16, batch_size=8,
                      progress=False, log_every=1, checkpoint_every=2))
    assert (out / "run.json").is_file() and (out / "policy" / "model.safetensors").is_file()
