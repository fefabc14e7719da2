"""CURVE key files for cross-host bus links: ``python -m bus.keys generate DIR [name=NAME]``.

Writes a key pair in ZeroMQ's certificate format (what ``zmq.auth`` and czmq read)::

    DIR/NAME.key          public key: copy it to every peer that must trust this one
    DIR/NAME.key_secret   public + secret key, mode 0600: stays on this host

A serving endpoint (the side that binds: a ``Publisher``, a ``Server``, a recorder's binding ``Subscriber``)
loads its own ``.key_secret`` and the ``.key`` files of the clients it lets in; a connecting endpoint loads its
own ``.key_secret`` and the server's ``.key`` (see ``bus.curve``). Keys are Z85 text (40 characters), never
pickled. The last stdout line of ``generate`` is JSON with both paths.

The first argument is the command (``generate``); the rest are hydra overrides of ``configs/bus/keys.yaml``, whose
``dir`` may be given without its key.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from bus.cli import CommandError, UsageError, command, one_line
from bus.config import compose, split_verb

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_Z85_RE = re.compile(rb"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")


COMMANDS = ("generate",)


@dataclass
class GenerateConfig:
    """``configs/bus/keys.yaml``: where ``generate`` writes and the file stem."""

    dir: str
    name: str = "server"


class KeyFileError(UsageError):
    """A key file that is missing, unreadable or does not hold what it should; the message names the file."""


def generate_keypair(directory: str | os.PathLike, name: str = "server") -> tuple[Path, Path]:
    """Create ``NAME.key`` and ``NAME.key_secret`` in ``directory`` (created, mode 0700); refuses to overwrite."""
    if not _NAME_RE.match(name):
        raise UsageError(f"key name {name!r}: expected 1-64 characters of [A-Za-z0-9_.-]")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory}: not a directory; DIR is the directory the key files go into (created if "
                         "missing)")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    public, secret = directory / f"{name}{PUBLIC_SUFFIX}", directory / f"{name}{SECRET_SUFFIX}"
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path} already exists; choose another name= or remove it first")
    old_umask = os.umask(0o077)  # the secret file must never exist readable by others, not even briefly
    try:
        made_public, made_secret = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old_umask)
    os.chmod(made_public, 0o644)
    return Path(made_public), Path(made_secret)


def load_public_key(path: str | os.PathLike) -> bytes:
    """The Z85 public key in a ``.key`` (or ``.key_secret``) file."""
    return _load(path)[0]


def load_keypair(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """``(public, secret)`` Z85 keys from a ``.key_secret`` file."""
    public, secret = _load(path)
    if secret is None:
        raise KeyFileError(f"{path}: holds no secret key; pass the {SECRET_SUFFIX} file, not the {PUBLIC_SUFFIX}")
    return public, secret


def load_public_keys(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> frozenset[bytes]:
    """Public keys from ``.key`` files, or from every ``*.key`` file of a directory."""
    if isinstance(paths, (str, os.PathLike)):
        path = Path(paths)
        files = sorted(path.glob(f"*{PUBLIC_SUFFIX}")) if path.is_dir() else [path]
        if path.is_dir() and not files:
            raise KeyFileError(f"{path}: no *{PUBLIC_SUFFIX} files in this directory")
    else:
        files = [Path(p) for p in paths]
    return frozenset(load_public_key(f) for f in files)


def check_key(key: bytes, what: str) -> bytes:
    """A Z85-encoded 32-byte CURVE key (40 characters); raises ``ValueError`` naming ``what`` otherwise."""
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, bytes) or not _Z85_RE.match(key):
        raise ValueError(f"{what}: expected a 40-character Z85 CURVE key, got {key!r:.60}")
    return key


def _load(path: str | os.PathLike) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise KeyFileError(f"{path}: not a readable CURVE key file ({e})") from e
    check_key(public, f"{path} public-key")
    if secret is not None:
        check_key(secret, f"{path} secret-key")
        if zmq.curve_public(secret) != public:
            raise KeyFileError(f"{path}: secret-key does not match public-key")
    return public, secret


@command("bus.keys")
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bus.keys generate DIR [name=NAME]``; see the module docstring."""
    _, rest = split_verb(sys.argv[1:] if argv is None else argv, COMMANDS, "bus.keys",
                         "python -m bus.keys generate DIR", __doc__)
    cfg = _configure(rest)
    try:
        public, secret = generate_keypair(cfg.dir, cfg.name)
    except (FileExistsError, UsageError):
        raise
    except OSError as e:  # permissions, a full disk: not the arguments' fault
        raise CommandError(f"could not write keys into {cfg.dir}: {one_line(e)}") from e
    print(f"wrote {public} (share it) and {secret} (keep it here, mode 0600)")
    print(json.dumps({"public": str(public), "secret": str(secret), "public_key": load_public_key(public).decode()}))
    return 0


def _configure(argv: Sequence[str]) -> GenerateConfig:
    return compose(GenerateConfig, "bus/keys", argv, "bus.keys generate", "DIR name=robot", doc=__doc__,
                   positional=("dir",))


if __name__ == "__main__":
    sys.exit(main())
