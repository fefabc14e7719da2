"""A real robot node under a few hundred hostile messages on its command socket and on its lockstep tick server,
the known killers among them (a zero-byte array of shape [2**63, 0]; a reset seed 2**64 - 1 and one of 2**63 - 1,
each followed by a seedless reset; frames over ZMQ_MAXMSGSIZE): it stays up, its streams keep flowing, every
reject is counted by kind, seeds stay in range, and a valid command is still obeyed afterwards. The hostile frames
are the seeded ones of ``benchmarks.fuzz_nodes`` (which runs the same at a larger scale on every socket kind)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from test_node import TIMEOUT, _wait_for, robot_node

from bus.message import REJECT_KINDS, Message
from bus.transport import Client, Publisher, Subscriber
from sim.node import SEED_LIMIT, hold_command, load_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/ is no installed package
from benchmarks.fuzz_nodes import CMD_LIMIT, HostileStream, fuzz, robot_semantic_cmds, seed_killers, wire  # noqa: E402

HOSTILE = 400
NODE_KINDS = {"schema", "dtype", "shape", "nonfinite", "range", "topic", "seed", "node_ticks"}


def _counts(status: Message, kinds: set[str], total: int) -> bool:
    """``status`` counts ``total`` rejects or more, at least one of every kind in ``kinds``."""
    meta = status.meta
    return meta["rejects"] >= total and all(meta.get(f"rej_{k}", 0) >= 1 for k in kinds)


def _reset(cmd: Publisher, events: Subscriber, seed: int | None) -> Message:
    """Ask for a reset (with ``seed``, or none) and wait for the robot's reset event that answers it."""
    cmd.publish("reset", meta={} if seed is None else {"seed": seed})
    return _wait_for(events, lambda m: m.topic == "episode" and m.meta["event"] == "reset"
                     and (seed is None or m.meta["seed"] == seed))


@pytest.mark.timeout(240)
def test_hostile_commands_are_counted_and_the_realtime_node_keeps_running(tmp_path) -> None:
    with robot_node(tmp_path / "node.log", "task=wipe", "perturb=false", "cameras=false") as node, \
            Subscriber(node.ready["pub"], topics=("status", "episode"), hwm=100_000) as sub, \
            Subscriber(node.ready["pub"], topics=("state",), conflate=True) as states, \
            Publisher(node.ready["cmd"], bind=False) as cmd:
        assert cmd.wait_for_subscriber("cmd", timeout=TIMEOUT)
        stream = HostileStream(0, [Message("cmd", 1.0, 0, {"target": np.zeros((1, 7))})], robot_semantic_cmds(),
                               ("cmd", "reset"), CMD_LIMIT)
        sock = cmd.socket
        run = fuzz(stream, lambda _, frames: sock.send_multipart(frames, copy=False), HOSTILE, 1.0, seed_killers())
        assert run["families"]["killer"] == 9 and run["families"]["oversized"] == 2
        assert node.proc.poll() is None, "the robot node exited under hostile commands"
        # Every kind the fuzz must have produced is counted, the bus's and the node's own.
        expected = {"header", "frames", "shape", "meta", "size", "seed", "nonfinite", "schema"}
        status = _wait_for(sub, lambda m: m.topic == "status" and _counts(m, expected, HOSTILE // 2))
        kinds = {k[4:] for k in status.meta if k.startswith("rej_")}
        assert kinds <= set(REJECT_KINDS) | NODE_KINDS, kinds
        # Streams still flow: a hundred more node ticks of state arrive (no timing asserted: a loaded machine is slow).
        first = states.recv(timeout=TIMEOUT)
        assert first is not None
        assert _wait_for(states, lambda m: m.seq >= first.seq + 100).seq >= first.seq + 100
        # Seeds stay in range: the largest one is taken, the next seedless reset wraps to 0. (A fresh subscriber:
        # the fuzz's own resets are still queued in the first; a status proves it is connected.)
        with Subscriber(node.ready["pub"], topics=("status", "episode")) as events:
            _wait_for(events, lambda m: m.topic == "status")
            assert _reset(cmd, events, SEED_LIMIT - 1).meta["seed"] == SEED_LIMIT - 1
            assert _reset(cmd, events, None).meta["seed"] == 0
        # The cut connection (frames over ZMQ_MAXMSGSIZE) came back: a valid command on it moves the TCP.
        start = states.recv(timeout=TIMEOUT)
        target = hold_command(start)
        target[0, 2] += 0.04
        t_end, deadline = start.meta["sim_time"] + 0.8, time.monotonic() + 60.0
        now = start
        while now.meta["sim_time"] < t_end and time.monotonic() < deadline:
            cmd.publish("cmd", {"target": target})
            time.sleep(0.01)
            now = states.recv(timeout=0) or now
        moved = states.recv(timeout=TIMEOUT).arrays["tcp_pos"][0] - start.arrays["tcp_pos"][0]
        assert moved[2] > 0.025, f"TCP moved {moved} toward +4 cm in z"
        assert node.proc.poll() is None


@pytest.mark.timeout(240)
def test_hostile_requests_are_refused_and_the_lockstep_server_keeps_answering(tmp_path) -> None:
    with robot_node(tmp_path / "node.log", "mode=lockstep", "cameras=false") as node, \
            Subscriber(node.ready["pub"], topics=("status",), hwm=100_000) as sub, \
            Client(node.ready["tick"]) as client:
        end = time.monotonic() + TIMEOUT
        while not client.request("ping", meta={"topic": "status"}, timeout=TIMEOUT).meta["subscribed"]:
            assert time.monotonic() < end, "the status subscription never reached the node"
            time.sleep(0.01)
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        try:
            raw.connect(node.ready["tick"])
            semantic = [*robot_semantic_cmds(), *(wire(Message("tick", 1.0, 0, meta={"node_ticks": v}))
                                                  for v in (0, -1, 6, 2**63 - 1, True, 1.5))]
            stream = HostileStream(1, [Message("tick", 1.0, 0, {"target": np.zeros((1, 7))}), Message("ping", 1.0)],
                                   semantic, ("tick", "reset", "ping"), CMD_LIMIT)
            rng = np.random.default_rng(1)

            def send(_: str, frames: list[bytes]) -> None:  # in the request envelope: an 8-byte request id
                raw.send_multipart([rng.bytes(8), *frames], copy=False)

            def between(i: int) -> None:
                while raw.poll(0):
                    raw.recv_multipart()  # answers to hostile requests that were valid enough to be answered
                if i % 20 == 19:
                    client.request("tick", timeout=TIMEOUT)  # a well-behaved client is served throughout

            fuzz(stream, send, 200, 1.0, seed_killers(), between)
            assert node.proc.poll() is None, "the robot node exited under hostile requests"
            refused = client.request("reset", meta={"seed": 2**63 - 1}, timeout=TIMEOUT)
            assert refused.topic == "error" and "seed" in refused.meta["reason"]
            largest = client.request("reset", meta={"seed": SEED_LIMIT - 1}, timeout=TIMEOUT)
            assert largest.meta["seed"] == SEED_LIMIT - 1
            assert client.request("reset", timeout=TIMEOUT).meta["seed"] == 0  # seed + 1 wraps
            start = client.request("tick", timeout=TIMEOUT)
            target = hold_command(start)
            target[0, 2] += 0.04
            for _ in range(40):
                end_state = client.request("tick", {"target": target}, timeout=TIMEOUT)
            moved = end_state.arrays["tcp_pos"][0, 2] - start.arrays["tcp_pos"][0, 2]
            assert moved > 0.025, f"TCP moved {moved} m toward +4 cm in z"
            expected = {"header", "frames", "shape", "meta", "seed", "node_ticks"}
            for _ in range(500):  # the last hostile requests may still be queued: tick on until all are counted
                status = sub.recv(timeout=0)
                if status is None:
                    client.request("tick", timeout=TIMEOUT)  # a status goes out every few ticks
                elif _counts(status, expected, 100):
                    break
            else:
                raise AssertionError(f"rejects not all counted: {sub.latest.get('status')}")
        finally:
            raw.close(linger=0)
        assert node.proc.poll() is None


@pytest.mark.parametrize("seed", [-1, SEED_LIMIT, 2**63])
def test_a_configured_seed_out_of_range_is_refused_at_start(seed: int) -> None:
    with pytest.raises(ValueError, match="seed"):
        load_config([f"seed={seed}"])
