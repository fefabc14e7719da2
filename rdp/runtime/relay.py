"""Observation relay for a slow node on another host: robot node PUB (loopback) -> CURVE-protected PUB.

    python -m rdp.runtime.relay checkpoint=RUN addresses.robot_pub=tcp://127.0.0.1:P addresses.obs=tcp://HOST:Q \
        secure.enabled=true secure.keys=DIR

The robot node binds loopback only and speaks plain TCP; this process forwards the raw frames (an XSUB/XPUB pair,
so the remote subscriber's topic subscriptions travel upstream and only what it asked for crosses the link) and
is the CURVE server for the remote side. Frames are not decoded here: the slow node validates and counts them.
The first stdout line is a JSON ready record with the bound address; SIGINT/SIGTERM end it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import zmq

from bus.cli import UsageError, command
from bus.node import node_args, serve
from rdp.runtime.config import RuntimeConfig, load_config
from rdp.runtime.curve import CurveServer


class Relay:
    """XSUB (connects to the robot node) -> XPUB (binds ``addresses.obs``, CURVE when ``secure.enabled``)."""

    def __init__(self, cfg: RuntimeConfig) -> None:
        self.server = CurveServer(cfg.secure.keys, cfg.secure.allow) if cfg.secure.enabled else None
        self.upstream = zmq.Context.instance().socket(zmq.XSUB)
        self.downstream = (self.server.ctx if self.server else zmq.Context.instance()).socket(zmq.XPUB)
        self.forwarded = 0
        self._stop = False
        for s in (self.upstream, self.downstream):
            s.setsockopt(zmq.LINGER, 0)
        self.upstream.connect(cfg.addresses.robot_pub)
        self.downstream.bind(cfg.addresses.obs)
        self.address = self.downstream.getsockopt_string(zmq.LAST_ENDPOINT)

    def stop(self, *_: object) -> None:
        self._stop = True

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.upstream, zmq.POLLIN)
        poller.register(self.downstream, zmq.POLLIN)
        while not self._stop:
            for sock, _ in poller.poll(100):
                if sock is self.upstream:
                    self.downstream.send_multipart(self.upstream.recv_multipart(copy=False), copy=False)
                    self.forwarded += 1
                else:  # subscription (un)registrations travel upstream
                    self.upstream.send_multipart(self.downstream.recv_multipart())

    def close(self) -> None:
        self.upstream.close(linger=0)
        self.downstream.close(linger=0)
        if self.server is not None:
            self.server.close()


@command("rdp.runtime.relay")
def main(argv: Sequence[str] | None = None) -> int:
    cfg = load_config(node_args(argv), doc=__doc__)
    if not cfg.addresses.robot_pub or not cfg.addresses.obs:
        raise UsageError("the relay needs addresses.robot_pub (input) and addresses.obs (output to bind)")
    relay = Relay(cfg)
    return serve(relay, lambda: {"event": "ready", "node": "relay", "pid": os.getpid(), "obs": relay.address},
                 lambda _: {"event": "exit", "node": "relay", "forwarded": relay.forwarded})


if __name__ == "__main__":
    sys.exit(main())
