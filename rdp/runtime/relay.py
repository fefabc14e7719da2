"""Observation relay for a slow node on another host: robot node PUB (loopback) -> CURVE-protected PUB.

    python -m rdp.runtime.relay checkpoint=RUN addresses.robot_pub=tcp://127.0.0.1:P addresses.obs=tcp://HOST:Q \
        secure.enabled=true secure.keys=DIR

The robot node binds loopback only and speaks plain TCP; this process forwards the raw frames (an XSUB/XPUB pair,
so the remote subscriber's topic subscriptions travel upstream and only what it asked for crosses the link) and
is the CURVE server for the remote side. Frames are not decoded here: the slow node validates and counts them.
The first stdout line is a JSON ready record with the bound address; SIGINT/SIGTERM end it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Sequence

import zmq

from bus.cli import UsageError, command
from rdp.runtime.config import load_config
from rdp.runtime.curve import CurveServer


@command("rdp.runtime.relay")
def main(argv: Sequence[str] | None = None) -> int:
    cfg = load_config(list(sys.argv[1:] if argv is None else argv))
    if not cfg.addresses.robot_pub or not cfg.addresses.obs:
        raise UsageError("the relay needs addresses.robot_pub (input) and addresses.obs (output to bind)")
    server = CurveServer(cfg.secure.keys, cfg.secure.allow) if cfg.secure.enabled else None
    ctx_out = server.ctx if server else zmq.Context.instance()
    upstream = zmq.Context.instance().socket(zmq.XSUB)
    downstream = ctx_out.socket(zmq.XPUB)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    forwarded = 0
    try:
        for s in (upstream, downstream):
            s.setsockopt(zmq.LINGER, 0)
        upstream.connect(cfg.addresses.robot_pub)
        downstream.bind(cfg.addresses.obs)
        address = downstream.getsockopt_string(zmq.LAST_ENDPOINT)
        print(json.dumps({"event": "ready", "node": "relay", "pid": os.getpid(), "obs": address}), flush=True)
        poller = zmq.Poller()
        poller.register(upstream, zmq.POLLIN)
        poller.register(downstream, zmq.POLLIN)
        while not stop:
            for sock, _ in poller.poll(100):
                if sock is upstream:
                    downstream.send_multipart(upstream.recv_multipart(copy=False), copy=False)
                    forwarded += 1
                else:  # subscription (un)registrations travel upstream
                    upstream.send_multipart(downstream.recv_multipart())
    finally:
        upstream.close(linger=0)
        downstream.close(linger=0)
        if server is not None:
            server.close()
        print(json.dumps({"event": "exit", "node": "relay", "forwarded": forwarded}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
