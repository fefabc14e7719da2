"""The grounding process on the bus: ground an operator's instruction in what the robot's scene camera saw.

    python -m grounding.node robot_pub=tcp://127.0.0.1:5560 [run=RUN] [ask=tcp://127.0.0.1:*]
    python -m grounding.node ask_address=ADDRESS "wipe again where you missed"     # a client (grounding.node.ask)

The node subscribes to a robot node's (or a camera node's) ``image`` and ``episode`` topics and keeps the scene
camera's frames of the episode running now and of the last one that ended: at most ``frame_hz`` frames a second,
``max_frames`` at most (the oldest dropped first, counted). It answers ``ground`` requests on a ROUTER socket
(``bus.transport.Server``; bound to loopback by default, the address in its ready line): meta ``instruction`` (text)
and ``video`` (``last``: the last episode that ended, the default, or ``current``: the one running) -> a
``grounded`` reply whose meta holds the grounding (``grounding.ground.Grounding.to_json``: task, goal, fields,
keyframe, confidence; the full grounding as JSON text in ``grounding``, as meta holds scalars only) and the video
it read (episode, frames, seconds); anything it cannot answer -> an ``error``
reply whose meta ``error`` says why in one line (no instruction, one too long, an unknown ``video``, no video yet,
fewer than two frames). A bad request, a malformed message or a frame of the wrong shape never ends the node.

Carrying it out. A ``ground`` request with meta ``execute`` true also starts the grounded task's goal policy on it:
``python -m rdp.run task=<task> checkpoint=<goal policy> goal=<goal> mode=<execute>`` as a child process
(``grounding.run.Execution``; the policy: ``policies.<task>`` or the shipped ``checkpoints/<task>/rdp_goal``; its
results in ``out/<id>-<task>-<goal>``). The ``grounded`` reply then carries ``execution`` (its id), or
``execution_error`` saying why none started (no goal policy for the task, one still running, ``execute=none``).
``execution`` requests answer the state of the latest one (``running``, ``succeeded``, ``failed``, ``stopped``,
``error``; with ``successes`` / ``episodes`` and the outcome line once it has ended), ``stop`` requests stop it the
way Ctrl-C stops rdp.run (its nodes stopped in order, its results written). One runs at a time. In the simulator the
run has a robot node of its own (a new scene at ``seed``), as ``grounding.run execute=`` does.

The first stdout line is a JSON ready record (``ask``: the address to send requests to); then stats lines every
``stats_s``; an exit record on SIGINT/SIGTERM.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bus.cli import UsageError, command
from bus.config import compose
from bus.message import Message
from bus.node import emit, log_to_stderr
from bus.node import serve as run_node
from bus.transport import Client, Server, Subscriber

log = logging.getLogger("grounding.node")
REQUEST_TOPIC = "ground"
STATUS_TOPIC, STOP_TOPIC = "execution", "stop"
VIDEOS = ("last", "current")


@dataclass
class GroundingNodeConfig:
    """``configs/grounding/node.yaml``."""

    run: str = ""
    robot_pub: str = ""
    ask: str = "tcp://127.0.0.1:*"
    camera: str = "scene_rgb"
    frame_hz: float = 8.0
    max_frames: int = 2000
    max_instruction_chars: int = 300
    stats_s: float = 5.0
    threads: int = 1
    # carrying out a grounding (requests with execute=true)
    execute: str = "realtime"
    policies: dict[str, str] = field(default_factory=dict)
    episodes: int = 1
    seed: int = 0
    max_episode_s: float | None = None
    out: str = "outputs/grounding"
    # client mode: send one instruction to a running node and print its answer
    ask_address: str = ""
    instruction: str = ""
    video: str = "last"
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.ask_address:
            if not self.instruction.strip():
                raise UsageError("a client needs the instruction: python -m grounding.node ask_address=ADDR "
                                 "\"wipe again where you missed\"")
            return
        if not self.robot_pub:
            raise UsageError("robot_pub= required: the robot node's PUB address (e.g. python -m grounding.node "
                             "robot_pub=tcp://127.0.0.1:5560)")
        if not self.run:
            from grounding.ground import shipped_run

            self.run = str(shipped_run())
        from grounding.run import check_execute_options

        check_execute_options(self)
        if not self.frame_hz > 0 or self.max_frames < 2 or self.max_instruction_chars < 1:
            raise UsageError(f"need frame_hz > 0, max_frames >= 2 and max_instruction_chars >= 1, got "
                             f"{self.frame_hz}, {self.max_frames}, {self.max_instruction_chars}")


class EpisodeVideo:
    """The frames of one episode, thinned to ``frame_hz`` and capped at ``max_frames`` (oldest dropped)."""

    def __init__(self, episode: int | None, frame_hz: float, max_frames: int) -> None:
        self.episode = episode
        self.period = 1.0 / frame_hz
        self.frames: deque[np.ndarray] = deque(maxlen=max_frames)
        self.times: deque[float] = deque(maxlen=max_frames)
        self.dropped = 0

    def add(self, frame: np.ndarray, sim_time: float) -> bool:
        """Keep ``frame`` if it is at least one period after the last kept one; True if kept."""
        if self.times and sim_time < self.times[-1] + self.period - 1e-9:
            return False
        if len(self.frames) == self.frames.maxlen:
            self.dropped += 1
        self.frames.append(frame)
        self.times.append(sim_time)
        return True

    def __len__(self) -> int:
        return len(self.frames)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        times = np.asarray(self.times, dtype=np.float64)
        return np.stack(self.frames), times - times[0]


class Carrying:
    """One grounding being carried out by ``rdp.run`` (``grounding.run.Execution``), followed in a worker thread;
    :meth:`status` is what an ``execution`` request is answered."""

    def __init__(self, ident: int, task: str, goal: str, mode: str, args: list[str], out: Path) -> None:
        from grounding.run import Execution

        self.ident, self.task, self.goal, self.mode, self.out = ident, task, goal, mode, out
        self.started = time.monotonic()
        self.ended: float | None = None
        self.result: dict[str, Any] | None = None
        self.error: str | None = None
        self.execution = Execution(args, out)
        self.thread = threading.Thread(target=self._follow, name=f"execution-{ident}", daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        try:
            self.result = self.execution.wait(echo=False)
        except Exception as e:  # its one-line reason goes to whoever asks
            self.error = str(e).splitlines()[0]
        self.ended = time.monotonic()

    @property
    def running(self) -> bool:
        return self.ended is None

    def status(self) -> dict[str, Any]:
        from grounding.run import outcome_line

        state = "running"
        meta: dict[str, Any] = {"execution": self.ident, "task": self.task, "goal": self.goal, "mode": self.mode,
                                "out": str(self.out), "elapsed_s": round((self.ended or time.monotonic())
                                                                          - self.started, 1)}
        if self.result is not None:
            n, rate = int(self.result.get("episodes") or 0), self.result.get("success_rate")
            state = ("stopped" if self.execution.cancelled else
                     "succeeded" if rate is not None and n and rate == 1.0 and self.result["exit_code"] == 0
                     else "failed")
            meta.update({"episodes": n, "successes": 0 if rate is None else round(rate * n),
                         "outcome": outcome_line(self.result)})
            if self.result.get("error"):
                meta["error"] = str(self.result["error"])
        elif self.error is not None:
            state = "error"
            meta["error"] = self.error
        return {"state": state, **meta}


class GroundingNode:
    """See the module docstring."""

    def __init__(self, cfg: GroundingNodeConfig) -> None:
        import torch

        from grounding.ground import Grounder

        torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.grounder = Grounder(cfg.run)
        self.counts: Counter[str] = Counter()
        self.current = EpisodeVideo(None, cfg.frame_hz, cfg.max_frames)
        self.last: EpisodeVideo | None = None
        self.carrying: Carrying | None = None
        self._stop = False
        self.sub: Subscriber | None = None
        self.server: Server | None = None
        try:
            self.sub = Subscriber(cfg.robot_pub, topics=("image", "episode"), hwm=2000)
            self.server = Server(cfg.ask)
        except Exception:
            self.close()
            raise

    @property
    def address(self) -> str:
        assert self.server is not None
        return self.server.address

    def stop(self, *_: object) -> None:
        self._stop = True

    def close(self) -> None:
        if self.carrying is not None and self.carrying.running:  # a run the node started ends with it
            self.carrying.execution.cancel()
            self.carrying.thread.join(timeout=90.0)
        for sock in (self.sub, self.server):
            if sock is not None:
                sock.close()

    def run(self) -> None:
        assert self.sub is not None and self.server is not None
        next_stats = time.monotonic() + self.cfg.stats_s
        while not self._stop:
            msg = self.sub.recv(timeout=0.01)
            while msg is not None:
                self._on_message(msg)
                msg = self.sub.recv(timeout=0)
            request = self.server.recv(timeout=0.01)
            if request is not None:
                topic, meta = self.answer(request.message)
                self.server.reply(request, topic, meta=meta)
            if time.monotonic() >= next_stats:
                emit(self.stats("stats"))
                next_stats += self.cfg.stats_s

    def stats(self, event: str) -> dict[str, Any]:
        assert self.sub is not None and self.server is not None
        return {"event": event, "node": "grounding", "episode": self.current.episode, "frames": len(self.current),
                "last_episode": None if self.last is None else self.last.episode,
                "last_frames": 0 if self.last is None else len(self.last),
                "rejects": dict(Counter(self.sub.rejects) + Counter(self.server.rejects)
                                + Counter({k: v for k, v in self.counts.items() if k.startswith("rej_")})),
                **{k: v for k, v in self.counts.items() if not k.startswith("rej_")}}

    # ------------------------------------------------------------------------------------ messages
    def _on_message(self, msg: Message) -> None:
        if msg.topic == "episode":
            ep = msg.meta.get("episode")
            if msg.meta.get("event") == "reset" and type(ep) is int:
                self._new_episode(ep)
            elif msg.meta.get("event") == "end" and len(self.current) >= 2:
                self.last = self.current
            return
        if msg.topic != "image":
            self.counts["rej_topic"] += 1
            return
        frame, t = msg.arrays.get(self.cfg.camera), msg.meta.get("sim_time")
        if frame is None or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
            self.counts["rej_image"] += 1
            if self.counts["rej_image"] == 1:
                got = "none" if frame is None else f"{frame.dtype} {frame.shape}"
                log.warning("image without a uint8 (H, W, 3) %s frame (got %s); further ones are only counted",
                            self.cfg.camera, got)
            return
        if not (isinstance(t, float) and np.isfinite(t) and t >= 0.0):
            self.counts["rej_image"] += 1
            return
        if self.current.times and t < self.current.times[-1]:  # time went back: a robot that reset unannounced
            self._new_episode(None)
        if self.current.add(frame, t):
            self.counts["frames_kept"] += 1

    def _new_episode(self, episode: int | None) -> None:
        if len(self.current) >= 2 and (self.last is None or self.last is not self.current):
            self.last = self.current
        self.current = EpisodeVideo(episode, self.cfg.frame_hz, self.cfg.max_frames)

    # ------------------------------------------------------------------------------------ requests
    def answer(self, request: Message) -> tuple[str, dict[str, Any]]:
        """A request -> (reply topic, reply meta): ``grounded`` with the grounding, ``execution`` with the state of
        the run carrying one out, or ``error`` with why."""
        try:
            if request.topic in (STATUS_TOPIC, STOP_TOPIC):
                return STATUS_TOPIC, self._execution(request.topic)
            return "grounded", self._ground(request)
        except UsageError as e:
            self.counts["rej_request"] += 1
            return "error", {"error": str(e)}
        except Exception as e:  # a model failure on a strange video must not end the node
            self.counts["errors"] += 1
            log.exception("grounding failed")
            return "error", {"error": f"grounding failed: {type(e).__name__}: {e}"}

    def _ground(self, request: Message) -> dict[str, Any]:
        if request.topic != REQUEST_TOPIC:
            raise UsageError(f"unknown request {request.topic!r:.40}; send {REQUEST_TOPIC!r} with meta instruction, "
                             f"{STATUS_TOPIC!r} or {STOP_TOPIC!r}")
        execute = request.meta.get("execute", False)
        if type(execute) is not bool:
            raise UsageError(f"execute={execute!r:.40}: true or false")
        text, which = request.meta.get("instruction"), request.meta.get("video", "last")
        if not isinstance(text, str) or not text.strip():
            raise UsageError("the request has no instruction (meta 'instruction': what to do, as text)")
        if len(text) > self.cfg.max_instruction_chars:
            raise UsageError(f"instruction of {len(text)} characters; at most {self.cfg.max_instruction_chars}")
        if which not in VIDEOS:
            raise UsageError(f"video={which!r:.40}: choose one of {', '.join(VIDEOS)}")
        video = self.last if which == "last" else self.current
        if video is None or len(video) < 2:
            raise UsageError(f"no {which} episode video yet ({0 if video is None else len(video)} frames): the "
                             f"robot has sent no {self.cfg.camera} images for one (start it with cameras=true)")
        frames, times = video.arrays()
        t0 = time.perf_counter()
        grounding = self.grounder.ground(frames, text, times=times, duration=float(times[-1]))
        self.counts["answered"] += 1
        full = grounding.to_json()
        answer = {"task": grounding.task, "goal": full["goal"], "confidence": full["confidence"],
                  "keyframe_s": full["keyframe_s"], "video": which, "episode": video.episode, "frames": len(video),
                  "video_s": round(float(times[-1]), 3), "ground_ms": round((time.perf_counter() - t0) * 1e3, 1),
                  "grounding": json.dumps(full)}
        if execute:
            try:
                answer["execution"] = self._carry_out(grounding).ident
            except (ValueError, OSError) as e:  # grounded, but not carried out: the reply says why
                self.counts["rej_execute"] += 1
                answer["execution_error"] = str(e).splitlines()[0]
        return answer

    def _carry_out(self, grounding: Any) -> Carrying:
        from grounding.ground import goal_option
        from grounding.run import goal_policy, rdp_run_args

        if self.cfg.execute == "none":
            raise UsageError("this grounding node carries nothing out (execute=none)")
        if self.carrying is not None and self.carrying.running:
            c = self.carrying
            raise UsageError(f"still carrying out execution {c.ident} ({c.task}, goal {c.goal}, "
                             f"{time.monotonic() - c.started:.0f} s): stop it or wait")
        policy = goal_policy(grounding.task, self.cfg.policies.get(grounding.task))
        ident = 1 if self.carrying is None else self.carrying.ident + 1
        goal = goal_option(grounding.goal)
        out = Path(self.cfg.out) / f"{ident:03d}-{grounding.task}-{goal}"
        args = rdp_run_args(self.cfg, grounding, policy, out)
        self.carrying = Carrying(ident, grounding.task, goal, self.cfg.execute, args, out)
        self.counts["executions"] += 1
        log.info("carrying out %s goal %s: python -m rdp.run %s", grounding.task, goal, " ".join(args))
        return self.carrying

    def _execution(self, topic: str) -> dict[str, Any]:
        if self.carrying is None:
            raise UsageError("nothing carried out yet: send a ground request with execute=true")
        if topic == STOP_TOPIC and self.carrying.running:
            self.carrying.execution.cancel()
        return self.carrying.status()


def ask(address: str, instruction: str, video: str = "last", timeout_s: float = 30.0) -> dict[str, Any]:
    """Send ``instruction`` to the grounding node at ``address``; its grounding. An ``error`` reply is a UsageError
    with the node's reason; no reply in ``timeout_s`` a TimeoutError."""
    with Client(address) as client:
        client.send(REQUEST_TOPIC, meta={"instruction": instruction, "video": video})
        reply = client.recv(timeout=timeout_s)
    if reply.topic != "grounded":
        raise UsageError(f"the grounding node answered: {reply.meta.get('error', reply.topic)}")
    meta = dict(reply.meta)
    return {**json.loads(str(meta.pop("grounding"))), **meta}


def parse_args(argv: Sequence[str]) -> GroundingNodeConfig:
    return compose(GroundingNodeConfig, "grounding/node", argv, "grounding node",
                   "run=checkpoints/grounding/slowfast robot_pub=tcp://127.0.0.1:5560", positional=("instruction",))


@command("grounding.node")
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(list(sys.argv[1:] if argv is None else argv))
    if cfg.ask_address:
        answer = ask(cfg.ask_address, cfg.instruction, cfg.video, cfg.timeout_s)
        fields = ", ".join(f"{k} {v}" for k, v in answer.get("fields", {}).items())
        print(f"grounded: task {answer['task']}, goal {answer['goal']} ({fields}), confidence "
              f"{answer['confidence']:.2f}, on {answer['frames']} frames of episode {answer['episode']}",
              file=sys.stderr)
        print(json.dumps(answer))
        return 0
    log_to_stderr()
    node = GroundingNode(cfg)
    return run_node(node, lambda: {"event": "ready", "node": "grounding", "ask": node.address,
                                   "run": cfg.run, "camera": cfg.camera}, lambda _: node.stats("exit"))


if __name__ == "__main__":
    sys.exit(main())
