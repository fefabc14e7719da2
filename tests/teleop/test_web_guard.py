"""Who may reach the browser operator server: the Host, Origin and per-run token checks of
``teleop.web.server``, each refused case answered with HTTP 403 and counted, the page's own origin with the token
accepted and its pose arriving at the node's operator socket. A ``websockets`` client stands in for browsers and
for hostile pages (which cannot forge Origin in a real browser: ``test_browser.py`` shows that part)."""

from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import numpy as np
import pytest
from browser_helpers import operator_server
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from teleop.node import WebConfig
from teleop.web.server import WebOperatorServer

POSE = {"type": "pose", "frame": "robot",
        "arms": [{"pos": [0.5, 0.0, 0.3], "quat": [1.0, 0.0, 0.0, 0.0], "grip": 0.25, "clutch": True}]}


def rejects_once_counted(server: WebOperatorServer, expected: dict[str, int], timeout: float = 5.0) -> dict:
    """The server's reject counts once they reach ``expected`` (it reads a page's messages on its own thread, so a
    count lags the send), or as they stand at ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while dict(server.rejects) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return dict(server.rejects)


def port_of(server: WebOperatorServer) -> int:
    return urlsplit(server.url).port


def open_ws(server: WebOperatorServer, name: str, origin: str | None, query: str,
            port: int | None = None) -> ClientConnection:
    """A WebSocket to the server whose Host names ``name:port`` whatever that name resolves to (so a rebinding
    page's Host can be sent to 127.0.0.1)."""
    port = port_of(server) if port is None else port
    sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=5)
    try:
        return connect(f"ws://{name}:{port}/ws{query}", sock=sock, origin=origin, open_timeout=5)
    except BaseException:
        sock.close()
        raise


def refused_status(server: WebOperatorServer, name: str, origin: str | None, query: str) -> int:
    with pytest.raises(InvalidStatus) as info:
        open_ws(server, name, origin, query).close()
    return info.value.response.status_code


def other_token(token: str) -> str:
    return ("A" if token[0] != "A" else "B") + token[1:]


@pytest.mark.parametrize(("name", "origin", "query", "reason"), [
    pytest.param("127.0.0.1", None, "?token={token}", "no_origin", id="no Origin (not a browser)"),
    pytest.param("127.0.0.1", "http://evil.example", "?token={token}", "bad_origin", id="another site"),
    pytest.param("127.0.0.1", "http://127.0.0.1:{other}", "?token={token}", "bad_origin", id="another local port"),
    pytest.param("127.0.0.1", "https://127.0.0.1:{other}", "?token={token}", "bad_origin", id="another https port"),
    pytest.param("127.0.0.1", "null", "?token={token}", "bad_origin", id="null (sandboxed frame, file)"),
    pytest.param("127.0.0.1", "http://[::1", "?token={token}", "bad_origin", id="unparsable"),
    pytest.param("127.0.0.1", "http://localhost:{port}", "?token={token}", "bad_origin", id="other loopback name"),
    pytest.param("127.0.0.1", "http://127.0.0.1:{port}/x", "?token={token}", "bad_origin", id="with a path"),
    pytest.param("evil.example", "http://evil.example:{port}", "?token={token}", "bad_host", id="DNS rebinding"),
    pytest.param("127.0.0.2", "http://127.0.0.2:{port}", "?token={token}", "bad_host", id="unlisted loopback"),
    pytest.param("127.0.0.1", "http://127.0.0.1:{port}", "", "no_token", id="no token"),
    pytest.param("127.0.0.1", "http://127.0.0.1:{port}", "?tok={token}", "no_token", id="misnamed token"),
    pytest.param("127.0.0.1", "http://127.0.0.1:{port}", "?token=", "bad_token", id="empty token"),
    pytest.param("127.0.0.1", "http://127.0.0.1:{port}", "?token={wrong}", "bad_token", id="wrong token"),
    pytest.param("127.0.0.1", "http://127.0.0.1:{port}", "?token={token}x", "bad_token", id="token plus a char"),
    pytest.param("127.0.0.1", "http://127.0.0.1:{port}", "?token=%C3%A9", "bad_token", id="non-ascii token"),
    pytest.param("127.0.0.1", "http://127.0.0.1:{port}", "?token={token}&token={token}", "bad_token",
                 id="two tokens"),
])
def test_handshake_refused(name, origin, query, reason):
    with operator_server() as (server, sub):
        port = port_of(server)
        fill = {"port": port, "other": port + 1 if port < 65535 else port - 1, "token": server.token,
                "wrong": other_token(server.token)}
        origin = None if origin is None else origin.format(**fill)
        assert refused_status(server, name, origin, query.format(**fill)) == 403
        assert dict(server.rejects) == {reason: 1}
        assert server.clients == 0 and server.received == 0
        assert sub.recv(timeout=0.1) is None


def test_the_page_origin_with_the_token_reaches_the_operator_socket():
    with operator_server() as (server, sub):
        port = port_of(server)
        assert server.url == f"http://127.0.0.1:{port}/?token={server.token}"
        with open_ws(server, "127.0.0.1", f"http://127.0.0.1:{port}", f"?token={server.token}") as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "hello"
            msg = None
            for _ in range(50):  # the inproc PUB may still be joining the SUB: resend until one arrives
                ws.send(json.dumps(POSE))
                msg = sub.recv(timeout=0.1)
                if msg is not None:
                    break
        assert msg is not None, "no pose reached the operator socket"
        assert msg.topic == "operator" and msg.meta["source"] == "web"
        np.testing.assert_allclose(msg.arrays["pose"], [[0.5, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0]])
        assert msg.arrays["clutch"].tolist() == [1] and server.rejects == {}


@pytest.mark.parametrize(("cfg", "name", "origin", "port"), [
    pytest.param(WebConfig(port=0), "localhost", "http://localhost:{port}", None, id="localhost on loopback"),
    pytest.param(WebConfig(port=0, allowed_hosts=["Robot-PC.local"]), "robot-pc.local",
                 "http://robot-pc.local:{port}", None, id="an allowed name"),
    pytest.param(WebConfig(port=0, allowed_hosts=["robot-pc.local"]), "robot-pc.local", "https://robot-pc.local",
                 80, id="an allowed name behind a TLS proxy"),
])
def test_other_names_of_this_server_are_accepted(cfg, name, origin, port):
    with operator_server(cfg) as (server, _):
        origin = origin.format(port=port_of(server))
        with open_ws(server, name, origin, f"?token={server.token}", port=port) as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "hello"
        assert server.rejects == {}


def test_the_page_needs_its_host_but_no_token():
    with operator_server() as (server, _):
        base = f"http://127.0.0.1:{port_of(server)}"
        with urllib.request.urlopen(f"{base}/", timeout=5) as r:  # the page holds no secret: no token needed
            assert b"slowfast teleop" in r.read() and r.headers["Referrer-Policy"] == "no-referrer"
        with urllib.request.urlopen(f"{base}/app.js", timeout=5) as r:
            assert b"token" in r.read()
        rebound = urllib.request.Request(f"{base}/", headers={"Host": f"evil.example:{port_of(server)}"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(rebound, timeout=5)
        assert info.value.code == 403 and dict(server.rejects) == {"bad_host": 1}


def test_refusals_are_logged_once_per_reason_and_the_server_keeps_serving(caplog):
    caplog.set_level(logging.WARNING, logger="teleop.web")
    with operator_server() as (server, _):
        port = port_of(server)
        for _ in range(3):
            refused_status(server, "127.0.0.1", "http://evil.example", f"?token={server.token}")
        wrong = other_token(server.token)
        for _ in range(2):
            refused_status(server, "127.0.0.1", f"http://127.0.0.1:{port}", f"?token={wrong}")
        assert dict(server.rejects) == {"bad_origin": 3, "bad_token": 2}
        with open_ws(server, "127.0.0.1", f"http://127.0.0.1:{port}", f"?token={server.token}") as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "hello"
    warnings = [r.getMessage() for r in caplog.records if r.name == "teleop.web"]
    assert len(warnings) == 2, warnings
    assert "evil.example" in warnings[0] and "bad_origin" in warnings[0]
    assert "bad_token" in warnings[1] and wrong not in warnings[1] and server.token not in warnings[1]


def test_each_run_draws_its_own_token():
    with operator_server() as (first, _), operator_server() as (second, _):
        assert first.token != second.token and len(first.token) >= 40
        stale = urlsplit(first.url).query  # an address from an earlier run
        assert refused_status(second, "127.0.0.1", f"http://127.0.0.1:{port_of(second)}", f"?{stale}") == 403
        assert dict(second.rejects) == {"bad_token": 1}


@pytest.mark.parametrize(("cfg", "match"), [
    (WebConfig(host="0.0.0.0"), "not a loopback address.*web.allow_remote=true"),
    (WebConfig(host="192.168.1.5"), "'192.168.1.5' is not a loopback address"),
    (WebConfig(host="0.0.0.0", allow_remote=True), "every interface.*web.allowed_hosts"),
    (WebConfig(allowed_hosts=["http://robot-pc.local/"]), "entry 'http://robot-pc.local/' is not a host"),
])
def test_unsafe_or_unusable_configs_are_refused(cfg, match):
    with pytest.raises(ValueError, match=match):
        WebOperatorServer(cfg, "inproc://unused")


def test_wildcard_with_allowed_hosts_reports_the_first_name():
    server = WebOperatorServer(WebConfig(host="0.0.0.0", allow_remote=True, allowed_hosts=["robot-pc.local"]),
                               "inproc://unused")
    assert server.own_hosts(8765) == ["robot-pc.local:8765", "robot-pc.local"]
    ipv6 = WebOperatorServer(WebConfig(host="::1"), "inproc://unused")
    assert ipv6.own_hosts(8765) == ["[::1]:8765", "localhost:8765"]


def test_the_node_reports_the_page_address_with_its_token_and_the_refusals():
    from teleop.node import TeleopNode, load_config

    any_port = "tcp://127.0.0.1:*"  # no robot: its sockets are inproc names nobody binds
    node = TeleopNode(load_config(["robot.pub=inproc://no-robot-state", "robot.cmd=inproc://no-robot-cmd",
                                   f"addresses.operator={any_port}", f"addresses.feedback={any_port}", "web.port=0"]))
    try:
        url = node.ready_record()["web"]
        assert url == node.web.url and url.endswith(f"/?token={node.web.token}")
        assert refused_status(node.web, "127.0.0.1", "http://evil.example", f"?{urlsplit(url).query}") == 403
    finally:
        node.close()
    assert node.summary()["web_rejects"] == {"bad_origin": 1}


def _grounded(ws: ClientConnection) -> dict:
    while True:
        msg = json.loads(ws.recv(timeout=10))
        if msg.get("type") == "grounded":
            return msg


def test_the_instruction_box_asks_the_grounding_node_and_shows_its_answer_or_why_not():
    """The page's instruction goes to the grounding node (a stand-in Server here) and its answer comes back to
    the page; without a grounding node, with a bad instruction or with one that answers an error, the page is
    told why, and no pose or reset ever reaches the operator socket."""
    import threading

    from bus.transport import Server

    with Server("tcp://127.0.0.1:*") as grounding:
        def answer_two() -> None:
            for topic, meta in (("grounded", {"grounding": json.dumps({"task": "wipe", "goal": "left",
                                                                       "fields": {"region": "left"},
                                                                       "confidence": 0.8}),
                                              "episode": 3, "frames": 40, "video_s": 5.0}),
                                ("error", {"error": "no last episode video yet"})):
                req = grounding.recv(timeout=10)
                assert req is not None and req.message.topic == "ground"
                assert req.message.meta["instruction"] == "wipe the left half again"
                grounding.reply(req, topic, meta=meta)

        worker = threading.Thread(target=answer_two, daemon=True)
        worker.start()
        with operator_server(WebConfig(port=0, grounding=grounding.address)) as (server, sub):
            port = port_of(server)
            with open_ws(server, "127.0.0.1", f"http://127.0.0.1:{port}", f"?token={server.token}") as ws:
                ws.send(json.dumps({"type": "instruction", "text": "wipe the left half again"}))
                got = _grounded(ws)
                assert got["task"] == "wipe" and got["goal"] == "left" and got["episode"] == 3
                assert got["run"] == "python -m rdp.run task=wipe policy=rdp_goal goal=left"
                ws.send(json.dumps({"type": "instruction", "text": "wipe the left half again"}))
                assert _grounded(ws)["error"] == "no last episode video yet"
                ws.send(json.dumps({"type": "instruction", "text": ""}))
                ws.send(json.dumps({"type": "instruction", "text": "x" * 301}))
                ws.send(json.dumps({"type": "instruction"}))
            assert rejects_once_counted(server, {"ValueError": 3}) == {"ValueError": 3}
            assert sub.recv(timeout=0.2) is None
        worker.join(timeout=10)
    with operator_server() as (server, _):
        port = port_of(server)
        with open_ws(server, "127.0.0.1", f"http://127.0.0.1:{port}", f"?token={server.token}") as ws:
            ws.send(json.dumps({"type": "instruction", "text": "lift it higher"}))
            assert "no grounding node" in _grounded(ws)["error"]


def test_ground_and_run_follows_the_run_the_grounding_node_started_and_stop_reaches_it():
    """"Ground and run": the instruction goes with execute=true; every page then gets the run's state until it has
    ended; "Stop run" asks the grounding node to stop it; a bad execute flag is refused and counted."""
    import threading

    from bus.transport import Server

    asked: list[tuple[str, dict]] = []
    with Server("tcp://127.0.0.1:*") as grounding:
        def answer() -> None:
            states = iter(["running", "running", "succeeded"])
            for _ in range(5):
                req = grounding.recv(timeout=10)
                assert req is not None
                asked.append((req.message.topic, dict(req.message.meta)))
                run = {"execution": 1, "task": "wipe", "goal": "left", "mode": "realtime", "elapsed_s": 1.0}
                if req.message.topic == "ground":
                    grounding.reply(req, "grounded", meta={
                        "grounding": json.dumps({"task": "wipe", "goal": "left", "fields": {}, "confidence": 0.9}),
                        "episode": 1, "frames": 10, "video_s": 2.0, "execution": 1})
                elif req.message.topic == "stop":
                    grounding.reply(req, "execution", meta={**run, "state": "stopped"})
                else:
                    state = next(states)
                    grounding.reply(req, "execution", meta={**run, "state": state, **(
                        {"outcome": "executed: 1/1 episodes succeeded"} if state == "succeeded" else {})})

        worker = threading.Thread(target=answer, daemon=True)
        worker.start()
        cfg = WebConfig(port=0, grounding=grounding.address, grounding_poll_s=0.05)
        with operator_server(cfg) as (server, sub):
            port = port_of(server)
            with open_ws(server, "127.0.0.1", f"http://127.0.0.1:{port}", f"?token={server.token}") as ws:
                ws.send(json.dumps({"type": "instruction", "text": "wipe the left half", "execute": "yes"}))
                ws.send(json.dumps({"type": "instruction", "text": "wipe the left half", "execute": True}))
                got = _grounded(ws)
                assert got["execution"] == 1 and got["task"] == "wipe"
                states = []
                while not states or states[-1] == "running":
                    msg = json.loads(ws.recv(timeout=10))
                    if msg.get("type") == "execution":
                        states.append(msg["state"])
                assert states == ["running", "running", "succeeded"]
                ws.send(json.dumps({"type": "stop_run"}))
                while (msg := json.loads(ws.recv(timeout=10))).get("type") != "execution":
                    pass
                assert msg["state"] == "stopped"
            assert rejects_once_counted(server, {"ValueError": 1}) == {"ValueError": 1}
            assert sub.recv(timeout=0.2) is None
        worker.join(timeout=10)
    assert [t for t, _ in asked] == ["ground", "execution", "execution", "execution", "stop"]
    assert asked[0][1]["execute"] is True and asked[0][1]["instruction"] == "wipe the left half"
