"""CURVE on the bus: key files, encrypted pub/sub and request/reply across two loopback addresses, refusals."""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from bus.curve import CurveClient, CurveServer, curve_from_config
from bus.keys import KeyFileError, generate_keypair, load_keypair, load_public_key, load_public_keys, main
from bus.transport import Client, Publisher, Server, Subscriber

TIMEOUT = 5.0
SERVER_HOST, CLIENT_HOST = "127.0.0.2", "127.0.0.1"

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    """The ZAP handler thread must stop with the last CURVE server."""
    before = threading.active_count()
    yield
    assert threading.active_count() == before


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    for name in ("server", "operator", "intruder"):
        generate_keypair(directory, name)
    return directory


def from_client_host(address: str) -> str:
    """Connect from CLIENT_HOST (ZeroMQ's ``source;destination`` syntax) to a server bound on SERVER_HOST."""
    assert address.startswith(f"tcp://{SERVER_HOST}:")
    return f"tcp://{CLIENT_HOST}:0;{address.removeprefix('tcp://')}"


def server_keys(keys: Path) -> CurveServer:
    return CurveServer.from_files(keys / "server.key_secret", [keys / "operator.key"])


def client_keys(keys: Path, name: str = "operator", server: str = "server") -> CurveClient:
    return CurveClient.from_files(keys / f"{name}.key_secret", keys / f"{server}.key")


def test_generate_writes_a_private_secret_and_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    assert main(["generate", str(tmp_path / "k"), "name=robot"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    public, secret = Path(out["public"]), Path(out["secret"])
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert load_public_key(public) == out["public_key"].encode() == load_keypair(secret)[0]
    assert main(["generate", str(tmp_path / "k"), "name=robot"]) == 2  # never overwrites a key (exit 2)
    assert main(["generate", f"dir={tmp_path / 'k2'}", "--name", "robot"]) == 2  # overrides only: name=robot
    assert "--name: no such option" in capsys.readouterr().err
    with pytest.raises(KeyFileError, match="no secret key"):
        load_keypair(public)
    with pytest.raises(KeyFileError, match="not a readable"):
        load_keypair(tmp_path / "missing.key_secret")
    with pytest.raises(ValueError, match="Z85"):
        CurveClient(b"short", b"x" * 40, b"y" * 40)


def test_load_public_keys_from_a_directory(keys: Path) -> None:
    assert len(load_public_keys(keys)) == 3
    assert load_public_keys([keys / "operator.key"]) == {load_public_key(keys / "operator.key")}


def test_curve_pubsub_across_addresses_and_refusals(keys: Path) -> None:
    """The allowed operator receives; an unknown key, a wrong server key and a plain socket get nothing."""
    with Publisher(f"tcp://{SERVER_HOST}:*", curve=server_keys(keys)) as pub:
        target = from_client_host(pub.address)
        with (
            Subscriber(target, ["robot/"], curve=client_keys(keys)) as operator,
            Subscriber(target, ["robot/"], curve=client_keys(keys, name="intruder")) as intruder,
            Subscriber(target, ["robot/"], curve=client_keys(keys, server="intruder")) as wrong_server,
            Subscriber(target, ["robot/"]) as plain,
        ):
            assert pub.wait_for_subscriber("robot/", TIMEOUT)
            wrench = np.arange(6, dtype=np.float64)
            got = None
            for _ in range(50):  # the other subscribers may still be retrying handshakes: publish until seen
                pub.publish("robot/wrench", {"wrench": wrench})
                got = operator.recv(timeout=0.1)
                if got is not None:
                    break
            assert got is not None and got.topic == "robot/wrench"
            np.testing.assert_array_equal(got.arrays["wrench"], wrench)
            for _ in range(5):
                pub.publish("robot/wrench", {"wrench": wrench})
            assert operator.recv(timeout=1.0) is not None
            for outsider in (intruder, wrong_server, plain):
                assert outsider.recv(timeout=0.3) is None
                assert outsider.received == 0 and not outsider.rejects


def test_curve_request_reply_across_addresses_and_an_unknown_client(keys: Path) -> None:
    with Server(f"tcp://{SERVER_HOST}:*", curve=server_keys(keys)) as server:
        target = from_client_host(server.address)
        answered = threading.Event()

        def serve() -> None:
            request = server.recv(timeout=TIMEOUT)
            if request is not None:
                server.reply(request, "tick/ack", {"step": request.message.arrays["step"] + 1})
                answered.set()

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with Client(target, curve=client_keys(keys)) as client:
                reply = client.request("tick", {"step": np.array([41], np.int64)}, timeout=TIMEOUT)
            assert reply.arrays["step"][0] == 42
        finally:
            thread.join()
        assert answered.is_set()
        with Client(target, curve=client_keys(keys, name="intruder")) as intruder:
            with pytest.raises(TimeoutError):
                intruder.request("tick", {"step": np.array([1], np.int64)}, timeout=0.5)
        assert server.recv(timeout=0.2) is None  # the intruder's request never reached the server


def test_two_curve_servers_share_one_zap_handler_with_their_own_allow_lists(keys: Path) -> None:
    open_to_all = CurveServer.from_files(keys / "server.key_secret", None)
    with (
        Publisher(f"tcp://{SERVER_HOST}:*", curve=server_keys(keys)) as strict,
        Publisher(f"tcp://{SERVER_HOST}:*", curve=open_to_all) as lenient,
        Subscriber(from_client_host(strict.address), curve=client_keys(keys, name="intruder")) as refused,
        Subscriber(from_client_host(lenient.address), curve=client_keys(keys, name="intruder")) as admitted,
    ):
        assert lenient.wait_for_subscriber(timeout=TIMEOUT)
        assert not strict.wait_for_subscriber(timeout=0.3)
        lenient.publish("x", {"a": np.zeros(2)})
        assert admitted.recv(timeout=TIMEOUT) is not None
        strict.publish("x", {"a": np.zeros(2)})
        assert refused.recv(timeout=0.2) is None


def test_curve_from_config(keys: Path) -> None:
    assert curve_from_config(None) is None and curve_from_config({}) is None
    client = curve_from_config({"secret": str(keys / "operator.key_secret"), "server_public": str(keys / "server.key")})
    assert isinstance(client, CurveClient) and client.server_key == load_public_key(keys / "server.key")
    server = curve_from_config(
        {"secret": str(keys / "server.key_secret"), "allowed_clients": [str(keys / "operator.key")]}
    )
    assert isinstance(server, CurveServer) and server.allowed_clients == {client.public_key}
    assert curve_from_config({"secret": str(keys / "server.key_secret")}).allowed_clients is None
    with pytest.raises(ValueError, match="expected"):
        curve_from_config({"secret": "x", "server": "y"})
