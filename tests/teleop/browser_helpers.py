"""Shared by the browser tests: child processes killed with their whole group, Debian's headless Chromium, a
minimal Chrome DevTools protocol client (over the ``websockets`` library) to read and drive its page, the
web operator server run in this process with the inproc socket the node would read, a robot node with a teleop
node wired to it, and the iwer WebXR emulator (a test-only npm package, see ``tests/teleop/webxr``)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bus.transport import Subscriber
from teleop.node import WebConfig
from teleop.web.server import WebOperatorServer

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
NO_CHROMIUM = "Debian's chromium is not installed (apt-get install chromium, or make as root)"
# iwer's UMD build: a plain script that defines the global IWER, so DevTools can inject it before the page runs.
IWER_BUNDLE = ROOT / "tests" / "teleop" / "webxr" / "node_modules" / "iwer" / "build" / "iwer.js"
NO_IWER = ("the iwer WebXR emulator (test-only npm package) is not installed in tests/teleop/webxr/node_modules: "
           "`make test` installs it when npm is present, or run `npm ci --prefix tests/teleop/webxr`")
ANY = "tcp://127.0.0.1:*"


@contextmanager
def process(args: list[str], log: Path, ready: bool = True) -> Iterator[tuple[subprocess.Popen, dict | None]]:
    """A child process in its own process group (the group is killed in finally: Chromium's helper processes
    too); yields (proc, ready record or None)."""
    with open(log, "w") as err:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
        try:
            record = None
            if ready:
                try:
                    record = json.loads(lines.get(timeout=60))
                except queue.Empty:
                    raise AssertionError(f"{args[:3]} gave no ready line: {log.read_text()[-2000:]}") from None
            yield proc, record
        finally:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)  # whatever is left of the group
            proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def chromium_args(profile: Path, url: str, extra: Sequence[str] = ()) -> list[str]:
    """Headless Chromium opening ``url`` with a fresh profile, a DevTools port of the OS's choosing (written to
    ``profile / "DevToolsActivePort"``) and nothing that reaches the network on its own; ``extra`` switches
    before the address."""
    assert CHROMIUM is not None, NO_CHROMIUM
    return [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
            "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={profile}",
            "--window-size=1200,900", *extra, url]


class DevTools:
    """A minimal Chrome DevTools protocol client over the page's WebSocket."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=64 * 1024 * 1024)
        self._id = 0

    def call(self, method: str, **params: Any) -> Any:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=20))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def key(self, key: str, down: bool) -> None:
        params = {"type": "keyDown" if down else "keyUp", "key": key, "code": f"Key{key.upper()}"}
        if down:
            params["text"] = key
        self.call("Input.dispatchKeyEvent", **params)

    def hold(self, key: str, seconds: float) -> None:
        self.key(key, True)
        time.sleep(seconds)
        self.key(key, False)

    def hold_until(self, key: str, expression: str, timeout: float = 30.0) -> None:
        """Hold ``key`` until ``expression`` is true on the page. The page moves the hand on a 50 Hz timer (by the
        time since its last tick, capped at 0.1 s), which a loaded machine runs late and seldom, so how far a
        key moves the hand is decided by the page state, not by how long the key was held."""
        self.key(key, True)
        try:
            wait_for(self, expression, timeout)
        finally:
            self.key(key, False)

    def open_with_script(self, url: str, source: str) -> None:
        """Navigate to ``url`` with ``source`` run in every new document before the page's own scripts."""
        self.call("Page.enable")  # without it the script is registered but never runs
        self.call("Page.addScriptToEvaluateOnNewDocument", source=source)
        self.call("Page.navigate", url=url)

    def click(self, selector: str) -> None:
        """A real left click (mouse press and release through the input pipeline) at the middle of the element:
        the page gets a trusted event with user activation, which e.g. entering WebXR requires."""
        box = self.eval(f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                        " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def close(self) -> None:
        self.ws.close()


def wait_for(dt: DevTools, expression: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = dt.eval(f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return false; }} }})()")
        if value:
            return value
        time.sleep(0.05)
    state = dt.eval("typeof teleop === 'undefined' ? document.title : JSON.stringify(teleop)")
    raise AssertionError(f"timed out waiting for {expression}; page state: {str(state)[:2000]}")


def devtools_url(profile: Path, timeout: float = 60.0) -> str:
    """The DevTools WebSocket of Chromium's first page, once Chromium (started with ``chromium_args``) is up."""
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while not port_file.exists() or not port_file.read_text().strip():
        if time.monotonic() > deadline:
            raise AssertionError("chromium wrote no DevToolsActivePort")
        time.sleep(0.05)
    port = int(port_file.read_text().split()[0])
    while True:
        pages = []
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
        except OSError:  # the DevTools server is not answering yet
            pass
        if pages:
            return pages[0]["webSocketDebuggerUrl"]
        if time.monotonic() > deadline:
            raise AssertionError("chromium has no page target")
        time.sleep(0.05)


@contextmanager
def robot_and_teleop(tmp_path: Path, *robot_args: str) -> Iterator[dict]:
    """A sim robot node (``robot_args`` are its key=value overrides) and a teleop node wired to it, every socket on
    an OS-picked port; yields the teleop node's ready record (its "web" address carries the page's token)."""
    with process([sys.executable, "-m", "sim.node", *robot_args, f"addresses.pub={ANY}", f"addresses.cmd={ANY}",
                  f"addresses.tick={ANY}"], tmp_path / "robot.log") as (_, robot), \
         process([sys.executable, "-m", "teleop.node", f"robot.pub={robot['pub']}", f"robot.cmd={robot['cmd']}",
                  f"addresses.operator={ANY}", f"addresses.feedback={ANY}", "web.port=0"],
                 tmp_path / "teleop.log") as (_, teleop):
        yield teleop


@contextmanager
def operator_server(cfg: WebConfig | None = None) -> Iterator[tuple[WebOperatorServer, Subscriber]]:
    """The web server on an OS-picked loopback port, publishing to a bound inproc SUB socket as in the node;
    yields (server, that socket). What reaches the socket is what the node would turn into robot commands."""
    sub = Subscriber(f"inproc://web-test-{os.getpid()}-{time.monotonic_ns()}", topics=("operator", "reset"), bind=True,
                     max_frame_bytes=65536)
    server = WebOperatorServer(cfg or WebConfig(port=0), sub.address)
    try:
        server.start()
        sub.recv(timeout=0.05)  # a binding SUB passes its subscriptions on only once polled (see Subscriber)
        yield server, sub
    finally:
        server.stop()
        sub.close()
