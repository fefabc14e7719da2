"""Optional ZeroMQ CURVE encryption and client authentication for bus endpoints (off by default).

CURVE roles follow who binds, not who publishes: the binding endpoint is the CURVE *server* (it holds its secret
key and the public keys of the clients it lets in), each connecting endpoint is a CURVE *client* (its own key
pair plus the server's public key). Every byte after the handshake is encrypted and authenticated; a peer with
a wrong server key, or whose public key is not allowed, never completes the handshake and so sends or receives
nothing. Key files come from ``python -m bus.keys generate``.

Client keys are checked by a ZAP handler: one ``zmq.auth.ThreadAuthenticator`` per ZeroMQ context, shared by
all CURVE servers in it (libzmq allows one handler per context), each server under its own ZAP domain with its
own allow-list. The handler thread starts with the first CURVE server of a context and stops with the last.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from bus.keys import check_key, load_keypair, load_public_key, load_public_keys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurveServer:
    """Keys of a binding endpoint. ``allowed_clients`` None: any client that knows our public key may connect
    (still encrypted); otherwise only those public keys (Z85)."""

    public_key: bytes
    secret_key: bytes
    allowed_clients: frozenset[bytes] | None = None

    def __post_init__(self) -> None:
        check_key(self.public_key, "CurveServer.public_key")
        check_key(self.secret_key, "CurveServer.secret_key")
        for key in self.allowed_clients or ():
            check_key(key, "CurveServer.allowed_clients entry")

    @classmethod
    def from_files(
        cls, secret_file: str | os.PathLike, allowed_clients: str | os.PathLike | Iterable[str | os.PathLike] | None
    ) -> CurveServer:
        """Our ``.key_secret`` file and the clients' ``.key`` files (or a directory of them); None allows any."""
        public, secret = load_keypair(secret_file)
        allowed = None if allowed_clients is None else load_public_keys(allowed_clients)
        return cls(public, secret, allowed)


@dataclass(frozen=True)
class CurveClient:
    """Keys of a connecting endpoint: its own pair and the public key of the server it expects."""

    public_key: bytes
    secret_key: bytes
    server_key: bytes

    def __post_init__(self) -> None:
        check_key(self.public_key, "CurveClient.public_key")
        check_key(self.secret_key, "CurveClient.secret_key")
        check_key(self.server_key, "CurveClient.server_key")

    @classmethod
    def from_files(cls, secret_file: str | os.PathLike, server_public_file: str | os.PathLike) -> CurveClient:
        public, secret = load_keypair(secret_file)
        return cls(public, secret, load_public_key(server_public_file))


Curve = CurveServer | CurveClient


def curve_from_config(cfg: Mapping[str, Any] | None) -> Curve | None:
    """CURVE settings from a config block (e.g. hydra ``bus.curve``); None or ``{}`` keeps the link plain.

    Binding side: ``{secret: PATH.key_secret, allowed_clients: DIR | [PATH.key, ...] | null}``.
    Connecting side: ``{secret: PATH.key_secret, server_public: PATH.key}``.
    """
    if not cfg:
        return None
    keys = set(cfg)
    if keys == {"secret", "server_public"}:
        return CurveClient.from_files(cfg["secret"], cfg["server_public"])
    if keys in ({"secret"}, {"secret", "allowed_clients"}):
        allowed = cfg.get("allowed_clients")
        return CurveServer.from_files(cfg["secret"], list(allowed) if isinstance(allowed, (list, tuple)) else allowed)
    raise ValueError(
        f"curve config keys {sorted(keys)}: expected {{secret, server_public}} (connecting side) or"
        " {secret, allowed_clients} (binding side)"
    )


class CurveGrant:
    """What ``apply`` set up for one socket; ``release`` when the socket closes (idempotent)."""

    def __init__(self, ctx: zmq.Context | None = None, domain: str | None = None) -> None:
        self._ctx, self._domain = ctx, domain

    def release(self) -> None:
        if self._ctx is not None and self._domain is not None:
            _ZAP.unregister(self._ctx, self._domain)
            self._ctx = self._domain = None


def apply(socket: zmq.Socket, curve: Curve | None) -> CurveGrant:
    """Set CURVE options on ``socket`` before it binds or connects; nothing for ``curve=None``."""
    if curve is None:
        return CurveGrant()
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support; cannot encrypt the bus")
    socket.setsockopt(zmq.CURVE_PUBLICKEY, curve.public_key)
    socket.setsockopt(zmq.CURVE_SECRETKEY, curve.secret_key)
    if isinstance(curve, CurveClient):
        socket.setsockopt(zmq.CURVE_SERVERKEY, curve.server_key)
        return CurveGrant()
    if not isinstance(curve, CurveServer):
        raise TypeError(f"curve must be CurveServer, CurveClient or None, got {type(curve).__name__}")
    socket.setsockopt(zmq.CURVE_SERVER, 1)
    domain = _ZAP.register(socket.context, curve.allowed_clients)
    socket.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
    return CurveGrant(socket.context, domain)


class _AllowList:
    """ZAP credentials provider: the client's Z85 public key must be in ``keys`` (None: any key)."""

    def __init__(self, keys: frozenset[bytes] | None) -> None:
        self.keys = keys
        self.refused: dict[bytes, int] = {}  # key -> handshakes refused (a refused peer keeps retrying)

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = self.keys is None or key in self.keys
        if not allowed:
            if key not in self.refused:
                log.warning("CURVE: refused client key %s on ZAP domain %s (not in the allow-list); further"
                            " attempts with it are only counted", key.decode(), domain)
            self.refused[key] = self.refused.get(key, 0) + 1
        return allowed


class _ZapRegistry:
    """One ZAP handler thread per context, shared by its CURVE servers, each with its own domain."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handlers: dict[int, tuple[ThreadAuthenticator, set[str]]] = {}
        self._ids = itertools.count()

    def register(self, ctx: zmq.Context, allowed: frozenset[bytes] | None) -> str:
        with self._lock:
            entry = self._handlers.get(id(ctx))
            if entry is None:
                entry = self._handlers[id(ctx)] = (_start_authenticator(ctx), set())
            domain = f"slowfast-{os.getpid()}-{next(self._ids)}"
            entry[0].configure_curve_callback(domain, _AllowList(allowed))
            entry[1].add(domain)
            return domain

    def unregister(self, ctx: zmq.Context, domain: str) -> None:
        with self._lock:
            entry = self._handlers.get(id(ctx))
            if entry is None or domain not in entry[1]:
                return
            auth, domains = entry
            domains.discard(domain)
            auth.credentials_providers.pop(domain, None)
            if not domains:
                del self._handlers[id(ctx)]
                auth.stop()


def _start_authenticator(ctx: zmq.Context, attempts: int = 50) -> ThreadAuthenticator:
    """Start a ZAP handler; retries while a just-stopped one still holds the ZAP endpoint (libzmq releases an
    inproc address only when its closed socket is reaped, a few ms later)."""
    for attempt in range(attempts):
        auth = ThreadAuthenticator(ctx)
        try:
            auth.start()
            return auth
        except zmq.ZMQError as e:
            auth.stop()
            if e.errno != zmq.EADDRINUSE or attempt == attempts - 1:
                raise
            time.sleep(0.01)
    raise AssertionError("unreachable")


_ZAP = _ZapRegistry()

__all__ = ["Curve", "CurveClient", "CurveGrant", "CurveServer", "apply", "curve_from_config"]
