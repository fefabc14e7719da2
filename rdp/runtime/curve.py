"""ZeroMQ CURVE for the links a slow node on another host uses.

    python -m rdp.runtime.curve DIR        # server + slow key pairs, and DIR/authorized/ with the slow's public key

Layout: ``DIR/server.key`` (public) + ``DIR/server.key_secret``, ``DIR/slow.key`` + ``DIR/slow.key_secret``,
``DIR/authorized/slow.key``: the client public keys a server accepts (add more for more slow hosts). The robot-host
side (fast node's chunk socket, observation relay) is the CURVE *server*; the slow node is the client.

``bus.transport`` sockets take a ``ctx``; pyzmq applies a context's default socket options to every socket it
creates, so the CURVE options travel in the context and the transport needs no change. A server context also runs
a ZAP authenticator (a thread) that accepts only the authorized keys (and, if given, only some client IPs).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from bus.cli import UsageError, command


def generate_keys(directory: str | Path) -> Path:
    """Create the server and slow key pairs (refuses to overwrite existing ones)."""
    d = Path(directory)
    if (d / "server.key_secret").exists():
        raise FileExistsError(f"{d} already holds keys; choose a new directory")
    (d / "authorized").mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(d, "server")
    public, _ = zmq.auth.create_certificates(d, "slow")
    shutil.copy(public, d / "authorized" / "slow.key")
    for secret in d.glob("*.key_secret"):
        secret.chmod(0o600)
    return d


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise FileNotFoundError(f"CURVE key file {path} not found (make keys with python -m rdp.runtime.curve DIR)")
    public, private = zmq.auth.load_certificate(path)
    if secret and private is None:
        raise ValueError(f"{path} holds no secret key")
    return public, private


class CurveServer:
    """A context whose sockets are CURVE servers, plus the authenticator; ``close()`` stops both."""

    def __init__(self, keys: str | Path, allow: list[str] | None = None) -> None:
        d = Path(keys)
        public, secret = _load(d / "server.key_secret", secret=True)
        self.ctx = zmq.Context()
        self.auth = ThreadAuthenticator(self.ctx)
        self.auth.start()
        if allow:
            self.auth.allow(*allow)
        self.auth.configure_curve(domain="*", location=str(d / "authorized"))
        self.ctx.setsockopt(zmq.CURVE_SERVER, 1)
        self.ctx.setsockopt(zmq.CURVE_SECRETKEY, secret)
        self.ctx.setsockopt(zmq.CURVE_PUBLICKEY, public)

    def close(self) -> None:
        self.auth.stop()
        self.ctx.destroy(linger=0)


def client_context(keys: str | Path, name: str = "slow") -> zmq.Context:
    """A context whose sockets authenticate as ``name`` to the server of ``keys``."""
    d = Path(keys)
    server_public, _ = _load(d / "server.key", secret=False)
    public, secret = _load(d / f"{name}.key_secret", secret=True)
    ctx = zmq.Context()
    ctx.setsockopt(zmq.CURVE_SERVERKEY, server_public)
    ctx.setsockopt(zmq.CURVE_PUBLICKEY, public)
    ctx.setsockopt(zmq.CURVE_SECRETKEY, secret)
    return ctx


def with_source(address: str, source: str | None) -> str:
    """``tcp://HOST:PORT`` -> ``tcp://SOURCE:0;HOST:PORT`` (connect from a given local address), as libzmq spells it."""
    if not source:
        return address
    scheme, _, rest = address.partition("://")
    if scheme != "tcp":
        raise ValueError(f"a source address needs a tcp:// endpoint, got {address!r}")
    return f"tcp://{source}:0;{rest}"


@command("rdp.runtime.curve")
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if len(args) != 1:
        raise UsageError(f"expected one argument, the directory to write the keys into; got {len(args)}")
    print(generate_keys(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
