"""rdp.runtime pieces that need no processes: step timing, chunk validation and hand-over, the conditioning ring,
config checks, CURVE links, and the fast node's decoder against the in-process sim adapter."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq

from bus.message import Message
from bus.transport import Publisher, Subscriber
from rdp.runtime.chunks import ChunkRejected, ChunkSlot, StepRing, parse_chunk, policy_step
from rdp.runtime.config import load_config
from rdp.runtime.curve import CurveServer, client_context, generate_keys, with_source


def make_tiny_run(root: Path, method: str = "rdp", cameras: bool = False, goal: bool = False) -> Path:
    """A seconds-long training run (2 short expert demos, 4 steps per stage): real files, meaningless weights.
    ``cameras``: an image policy (rdp only) reading the wrist camera (recorded 96x96 at 10 Hz, resized to 16x16);
    ``goal``: a goal-conditioned policy (demos recorded with goal=random, ``goal`` observed)."""
    from rdp.train import DiffusionSizes, MethodConfig, TokenizerSizes, TrainConfig, train
    from teleop.record_expert import RecordConfig, record_expert_episodes

    torch.set_num_threads(1)
    demos = root / ("cam_demos" if cameras else "goal_demos" if goal else "demos")
    if not demos.exists():
        record_expert_episodes(RecordConfig(task="wipe", episodes=2, seed=0, out=str(demos), max_steps=60,
                                            cameras=cameras, goal="random" if goal else "default", progress=False))
    rdp = method == "rdp"
    vision = {"image_keys": ("wrist_rgb",), "image_size": 16, "encoder": "resnet", "encoder_width": 8,
              "encoder_stem_stride": 4} if cameras else {}
    method_cfg = MethodConfig(
        name=method, obs_keys=(*(("proprio", "tactile") if rdp else ("proprio",)), *(("goal",) if goal else ())),
        cond_key="tactile" if rdp else None,
        tokenizer=TokenizerSizes(latent_steps=4, latent_channels=4, encoder_hidden=16, decoder_hidden=16) if rdp
        else None,
        diffusion=DiffusionSizes(down_dims=(16, 32), diffusion_step_embed_dim=16, num_train_timesteps=20,
                                 num_inference_steps=2),
        tokenizer_steps=4 if rdp else 0, policy_steps=4, warmup_steps=2, **vision,
    )
    out = root / (f"{method}_vision" if cameras else f"{method}_goal" if goal else method)
    train(TrainConfig(task="wipe", method=method_cfg, data=str(demos), out=str(out), horizon=16, batch_size=8,
                      progress=False, log_every=1, checkpoint_every=4))
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("runtime_ckpt"))


def _chunk_msg(**meta_over) -> Message:
    meta = {"episode": 1, "obs_step": 8, "start_step": 8, "obs_stamp": 1.5, "plan": 3, "infer_ms": 4.0, **meta_over}
    return Message("chunk", 0.0, 0, {"chunk": np.zeros((4, 4), np.float32), "anchor": np.zeros(10, np.float32)}, meta)


def test_policy_step_tolerates_accumulated_sim_time() -> None:
    t = 0.0
    for _ in range(20):  # 20 physics steps of 2 ms: lands a hair off 0.04
        t += 0.002
    assert t != 0.04 and policy_step(t, 25.0) == 1
    assert policy_step(0.004, 25.0) == 0 and policy_step(0.0399, 25.0) == 0 and policy_step(0.08, 25.0) == 2


def test_parse_chunk_accepts_good_and_names_every_bad_kind() -> None:
    c = parse_chunk(_chunk_msg(), (4, 4), 10, received=2.0)
    assert c.obs_step == 8 and c.plan == 3 and c.data.flags.owndata
    bad = [
        (Message("chunk", 0, 0, {"chunk": np.zeros((4, 4), np.float32)}, _chunk_msg().meta), "schema"),
        (Message("chunk", 0, 0, {"chunk": np.zeros((4, 4)), "anchor": np.zeros(10, np.float32)}, _chunk_msg().meta),
         "dtype"),
        (Message("chunk", 0, 0, {"chunk": np.zeros((5, 4), np.float32), "anchor": np.zeros(10, np.float32)},
                 _chunk_msg().meta), "shape"),
        (Message("chunk", 0, 0, {"chunk": np.full((4, 4), np.nan, np.float32), "anchor": np.zeros(10, np.float32)},
                 _chunk_msg().meta), "nonfinite"),
        (_chunk_msg(obs_step=-1), "meta"),
        (_chunk_msg(start_step=2), "meta"),
        (_chunk_msg(obs_stamp="x"), "meta"),
        (_chunk_msg(plan=True), "meta"),
        (_chunk_msg(revision=-1), "meta"),
        (_chunk_msg(revision=1.0), "meta"),
    ]
    for msg, kind in bad:
        with pytest.raises(ChunkRejected) as exc:
            parse_chunk(msg, (4, 4), 10, received=0.0)
        assert exc.value.kind == kind, (kind, exc.value)


def test_chunk_slot_latest_wins_and_waits_for_its_start_step() -> None:
    def chunk(obs_step: int, start: int, episode: int = 0):
        return parse_chunk(_chunk_msg(obs_step=obs_step, start_step=start, episode=episode), (4, 4), 10, 0.0)

    slot = ChunkSlot()
    assert slot.offer(chunk(0, 2))
    assert slot.take(1) is None and slot.take(2).obs_step == 0
    assert slot.offer(chunk(8, 9)) and slot.offer(chunk(16, 17))  # the newer plan replaces the pending one
    assert not slot.offer(chunk(12, 12))  # older than what is pending: dropped
    assert slot.take(20).obs_step == 16 and slot.current.obs_step == 16 and slot.pending is None
    assert slot.offer(chunk(0, 0, episode=1))  # a new episode starts over


def test_a_higher_revision_of_the_same_observation_replaces_the_running_chunk() -> None:
    def chunk(obs_step: int, revision: int | None = None):
        extra = {} if revision is None else {"revision": revision}
        return parse_chunk(_chunk_msg(obs_step=obs_step, start_step=obs_step + 1, **extra), (4, 4), 10, 0.0)

    slot = ChunkSlot()
    assert slot.offer(chunk(8)) and slot.take(9).revision == 0  # no revision: 0
    assert not slot.offer(chunk(8, 0))  # the same again: dropped
    assert slot.offer(chunk(8, 1)) and slot.take(30).revision == 1  # the planner's pick, late: takes over
    assert not slot.offer(chunk(8, 1)) and not slot.offer(chunk(4, 5))
    assert slot.offer(chunk(16)) and not slot.offer(chunk(8, 2))  # a newer observation beats any revision


def test_step_ring_returns_the_step_or_the_nearest_older_one() -> None:
    ring = StepRing(4)
    assert ring.get(3) is None
    for k in (0, 1, 3):
        ring.put(k, k * 10)
    assert ring.get(1) == 10 and ring.get(2) == 10 and ring.get(3) == 30
    ring.put(5, 50)  # takes step 1's slot
    assert ring.get(4) == 30 and ring.get(1) == 0 and ring.get(5) == 50
    ring.clear()
    assert ring.get(5) is None


def test_runtime_config_rejects_bad_values() -> None:
    assert load_config(["checkpoint=X"]).fast.cmd_hz == 250.0
    for override, match in [("mode=fast", "mode"), ("fast.hold=drift", "hold"), ("slow.replan_every=0", "replan"),
                            ("fast.cmd_hz=0", "cmd_hz"), ("nope=1", "nope=1: no such runtime config key"),
                            ("secure.enabled=true", "secure.keys"), ("fast.phase_lead_ms=4.0", "phase_lead_ms"),
                            ("slow.nice=20", "slow.nice"), ("slow.nice=-1", "slow.nice"),
                            ("fast.rt_priority=100", "fast.rt_priority"), ("fast.rt_priority=-1", "fast.rt_priority"),
                            ("fast.spin_ms=4.0", "fast.spin_ms"), ("fast.prewarm_ms=-1", "fast.prewarm_ms")]:
        with pytest.raises(ValueError, match=match):
            load_config(["checkpoint=X", override])


def test_runtime_config_picks_the_shipped_run_of_the_named_policy() -> None:
    assert Path(load_config(["task=lift"]).checkpoint).parts[-2:] == ("lift", "rdp")
    assert Path(load_config(["task=lift", "policy=rdp_wrench"]).checkpoint).parts[-2:] == ("lift", "rdp_wrench")
    assert load_config(["task=lift", "policy=rdp_wrench", "checkpoint=X"]).checkpoint == "X"  # explicit wins
    with pytest.raises(FileNotFoundError, match="no shipped 'rdp_wrench' checkpoint for task 'wipe'"):
        load_config(["task=wipe", "policy=rdp_wrench"])


def test_curve_link_delivers_to_the_authorized_key_only(tmp_path: Path) -> None:
    keys = generate_keys(tmp_path / "keys")
    other = generate_keys(tmp_path / "other")  # a valid key pair the server does not know
    server = CurveServer(keys)
    good_ctx, bad_ctx = client_context(keys), client_context(other)
    bad_ctx.setsockopt(zmq.CURVE_SERVERKEY, zmq.auth.load_certificate(keys / "server.key")[0])
    try:
        with Subscriber("tcp://127.0.0.1:*", topics=("chunk",), bind=True, ctx=server.ctx) as sub:
            address = with_source(sub.address, "127.0.0.2")
            assert address.startswith("tcp://127.0.0.2:0;127.0.0.1:")
            with Publisher(address, bind=False, ctx=bad_ctx) as bad, \
                    Publisher(address, bind=False, ctx=good_ctx) as good:
                def subscribed(pub: Publisher, seconds: float) -> bool:
                    end = time.monotonic() + seconds
                    while time.monotonic() < end:
                        sub.recv(timeout=0.01)  # a binding subscriber hands out its subscriptions while used
                        if pub.wait_for_subscriber("chunk", timeout=0.02):
                            return True
                    return False

                assert subscribed(good, 5.0)
                assert not subscribed(bad, 0.5)  # the CURVE handshake never completes
                end = time.monotonic() + 2.0
                got = []
                while time.monotonic() < end and len(got) < 3:
                    bad.publish("chunk", meta={"who": "bad"})
                    good.publish("chunk", meta={"who": "good"})
                    msg = sub.recv(timeout=0.05)
                    if msg is not None:
                        got.append(msg.meta["who"])
                assert got and set(got) == {"good"}
    finally:
        good_ctx.destroy(linger=0)
        bad_ctx.destroy(linger=0)
        server.close()


def test_fast_node_decoder_decodes_like_the_sim_adapter(tiny_run: Path) -> None:
    """The fast node's decoder (``load_decoder``: the tokenizer only, no diffusion policy) and sim.eval's adapter
    turn the same latent and readings into the same actions."""
    from rdp.api import load_decoder
    from rdp.inference import make_policy

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    ref = make_policy("wipe", checkpoint=tiny_run, replan_every=8).decoder
    ex = load_decoder(tiny_run, task="wipe")
    assert not any(isinstance(m, torch.nn.Module) and type(m).__name__ == "DiffusionPolicy" for m in vars(ex).values())
    latent = rng.normal(size=ex.plan_shape).astype(np.float32)
    anchor = rng.normal(size=ex.anchor_dim).astype(np.float32)
    steps = [{"proprio": rng.normal(size=10).astype(np.float32), "tactile": rng.normal(size=45).astype(np.float32),
              "wrench": np.zeros(6, np.float32)} for _ in range(5)]
    ex.start(latent, anchor)
    ref.start(torch.from_numpy(latent), anchor)
    for f in steps:
        np.testing.assert_array_equal(ex.step(f), ref.step(f))
    assert ex.t == ref.t == 5
    with pytest.raises(ValueError, match="trained on task 'wipe', not 'peel'"):
        load_decoder(tiny_run, task="peel")


def test_rehearsal_leaves_the_decoded_actions_unchanged(tiny_run: Path) -> None:
    """The fast node rehearses each step's decode just before the tick (fast.prewarm_ms); the actions it then sends
    are bit for bit those of a node that never rehearses, and a rehearsal past the horizon is a no-op."""
    from rdp.api import load_decoder

    torch.set_num_threads(1)
    rng = np.random.default_rng(2)
    plain, warm = (load_decoder(tiny_run) for _ in range(2))
    latent = rng.normal(size=plain.plan_shape).astype(np.float32)
    anchor = rng.normal(size=plain.anchor_dim).astype(np.float32)
    for ex in (plain, warm):
        ex.start(latent, anchor)
    for _ in range(plain.horizon):
        f = {"proprio": rng.normal(size=10).astype(np.float32), "tactile": rng.normal(size=45).astype(np.float32),
             "wrench": np.zeros(6, np.float32)}
        other = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in f.items()}  # an older reading
        warm.rehearse(other)
        warm.rehearse(f)
        assert warm.t == plain.t
        np.testing.assert_array_equal(warm.step(f), plain.step(f))
    warm.rehearse(f)  # exhausted: nothing to rehearse, nothing raised
    assert warm.t == plain.horizon


def _hand_over_node(run: Path, lockstep: bool = True):
    """The hand-over state of a FastNode (decoder, chunk slot, step ring), without its sockets."""
    from collections import Counter

    from rdp.api import load_decoder
    from rdp.runtime.fast import FastNode
    from rdp.runtime.timing import Trace

    n = FastNode.__new__(FastNode)
    n.decoder = load_decoder(run)
    n.horizon, n.lockstep, n.step, n.staged = n.decoder.horizon, lockstep, -1, None
    n.slot, n.ring, n.counts = ChunkSlot(), StepRing(2 * n.horizon), Counter()
    n.adoptions = Trace(("wall", "sim_time", "obs_step", "step", "skipped", "infer_ms", "age_ms"))
    n._sim_time = lambda: 0.0
    return n


def test_staged_hand_over_decodes_exactly_like_a_catch_up_at_the_take_over(tiny_run: Path) -> None:
    """The fast node stages a pending chunk after sending its command (start + catch-up on the readings of steps
    that passed, in a context of its own) while the running chunk keeps decoding; at the take-over every action,
    before and after, equals the hand-over that does all of it at once."""

    from rdp.runtime.chunks import Chunk
    from rdp.runtime.fast import FastNode

    torch.set_num_threads(1)
    rng = np.random.default_rng(1)

    def chunk(obs_step: int, start_step: int) -> Chunk:
        return Chunk(data=rng.normal(size=a.decoder.plan_shape).astype(np.float32),
                     anchor=rng.normal(size=a.decoder.anchor_dim).astype(np.float32), episode=1, obs_step=obs_step,
                     start_step=start_step, obs_stamp=0.0, plan=0, infer_ms=0.0, received=0.0)

    def reading() -> dict[str, np.ndarray]:
        return {"proprio": rng.normal(size=10).astype(np.float32), "tactile": rng.normal(size=45).astype(np.float32),
                "wrench": np.zeros(6, np.float32)}

    def on_step(n: FastNode, step: int, f: dict[str, np.ndarray]) -> np.ndarray:  # FastNode._on_step's decoding
        n.step = step
        n.ring.put(step, f)
        taken = n.slot.take(step)
        if taken is not None:
            n._adopt(taken, step)
        n._catch_up(step - n.slot.current.obs_step, f)
        return n.decoder.step(f)

    a, b = _hand_over_node(tiny_run), _hand_over_node(tiny_run)
    first, second = chunk(0, 0), chunk(3, 5)
    readings = [reading() for _ in range(10)]
    staged = 0
    for n, stage in ((a, True), (b, False)):
        n.slot.offer(first)
        out = []
        for step, f in enumerate(readings):
            if step == 4:
                n.slot.offer(second)  # arrives during step 4, late: steps 3 and 4 have passed
            out.append(on_step(n, step, f))
            if stage:
                staged += n._stage_pending()
        n.out = out
    assert staged == 1 and a.counts["staged"] == 1 and b.counts["staged"] == 0
    assert a.slot.current is second and b.slot.current is second
    for x, y in zip(a.out, b.out, strict=True):
        np.testing.assert_array_equal(x, y)


def test_realtime_stages_a_late_replacement_a_few_steps_a_tick_then_decodes_as_a_burst_would(tiny_run: Path):
    """Realtime: a chunk that arrives many steps late (a planner's pick replacing the chunk of the same observation)
    is staged a few decoder steps per tick while the running chunk goes on, and takes over once staged; from then
    on every action equals a take-over that did the whole catch-up at once at that step."""

    from rdp.runtime.chunks import Chunk
    from rdp.runtime.fast import STAGE_STEPS_PER_TICK, FastNode

    torch.set_num_threads(1)
    rng = np.random.default_rng(2)

    a, b = _hand_over_node(tiny_run, lockstep=False), _hand_over_node(tiny_run)
    horizon = a.horizon
    late = STAGE_STEPS_PER_TICK * 2 + 1  # more than one tick's staging
    assert late + 6 <= horizon
    data = [rng.normal(size=a.decoder.plan_shape).astype(np.float32) for _ in range(2)]
    anchor = rng.normal(size=a.decoder.anchor_dim).astype(np.float32)
    own = Chunk(data[0], anchor, 1, 0, 0, 0.0, 0, 0.0, 0.0)
    pick = Chunk(data[1], anchor, 1, 0, 1, 0.0, 0, 0.0, 0.0, revision=1)
    readings = [{"proprio": rng.normal(size=10).astype(np.float32), "tactile": rng.normal(size=45).astype(np.float32),
                 "wrench": np.zeros(6, np.float32)} for _ in range(late + 6)]

    def on_step(n: FastNode, step: int) -> np.ndarray:  # FastNode._on_step's decoding, one step a tick
        f = readings[step]
        n.step = step
        n.ring.put(step, f)
        taken = None if n._staging_behind(step) else n.slot.take(step)
        if taken is not None:
            n._adopt(taken, step)
        n._catch_up(step - n.slot.current.obs_step, f)
        out = n.decoder.step(f)
        n._stage_pending()
        return out

    a.slot.offer(own)
    out_a, staged_t, take_step = [], [], None
    for step in range(len(readings)):
        if step == late:
            assert a.slot.offer(pick)  # the same observation, a higher revision
        out_a.append(on_step(a, step))
        if a.staged is not None:
            staged_t.append(a.staged[1]["t"])
        if take_step is None and a.slot.current is pick:
            take_step = step
    assert take_step is not None and a.counts["staged"] == 1
    assert np.all(np.diff([0, *staged_t]) <= STAGE_STEPS_PER_TICK)  # never more than the budget in a tick
    b.slot.offer(own)  # the reference: the pick taken at a's take-over step with the whole catch-up at once
    out_b = []
    for step in range(len(readings)):
        if step == take_step:
            assert b.slot.offer(pick)
        out_b.append(on_step(b, step))
    assert take_step > late + 1  # a waited while it staged
    for x, y in zip(out_a[take_step:], out_b[take_step:], strict=True):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(out_a[:late], out_b[:late], strict=True):
        np.testing.assert_array_equal(x, y)


_GC_CHILD = """
import gc, json
from rdp.runtime.timing import LoopGc
loop = LoopGc(manual=True)
frozen, auto = gc.get_freeze_count(), gc.isenabled()
for _ in range(5000):  # cycles: garbage only the cyclic collector frees
    a = []; a.append(a)
before = gc.get_count()[0]
loop.idle()
after = gc.get_count()[0]
s = loop.summary()
loop.close()
print(json.dumps({"frozen": frozen, "auto": auto, "before": before, "after": after, "summary": s,
                  "enabled_after_close": gc.isenabled()}))
"""


def test_loop_gc_moves_collections_to_where_the_loop_calls_them() -> None:
    """Manual mode: start-up objects frozen, automatic collection off, ``idle`` collects the young generations once
    they are due (the cycles made meanwhile are freed), every pause is measured; ``close`` turns collection back on.
    In a child process: the test process's own collector stays as it is."""
    import json
    import subprocess
    import sys

    from rdp.runtime.process import ROOT

    out = subprocess.run([sys.executable, "-c", _GC_CHILD], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["frozen"] > 1000 and r["auto"] is False
    assert r["before"] >= 5000 and r["after"] < 10, r
    assert r["summary"]["manual"] and r["summary"]["n"] >= 2 and r["summary"]["by_generation"][1] >= 1
    assert r["enabled_after_close"] is True
