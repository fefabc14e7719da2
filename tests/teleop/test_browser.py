"""The browser operator page in a real headless Chromium, driven over the Chrome DevTools protocol: it loads,
connects, its key presses move the robot through the clutch, and it renders touch feedback (page state and a
screenshot). Needs Debian's ``chromium`` (``make`` installs it when run as root)."""

from __future__ import annotations

import base64
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
from contextlib import ExitStack, contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
ANY = "tcp://127.0.0.1:*"
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium, or make as root)"
)


@contextmanager
def process(args: list[str], log: Path, ready: bool = True):
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


class DevTools:
    """A minimal Chrome DevTools protocol client over the page's WebSocket."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=64 * 1024 * 1024)
        self._id = 0

    def call(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=20))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
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

    def close(self) -> None:
        self.ws.close()


def wait_for(dt: DevTools, expression: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = dt.eval(f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return false; }} }})()")
        if value:
            return value
        time.sleep(0.05)
    state = dt.eval("typeof teleop === 'undefined' ? 'no teleop' : JSON.stringify(teleop)")
    raise AssertionError(f"timed out waiting for {expression}; page state: {str(state)[:2000]}")


def feedback(dt: DevTools) -> dict:
    return json.loads(dt.eval("JSON.stringify(teleop.feedback)"))


def devtools_url(profile: Path, timeout: float = 60.0) -> str:
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


@pytest.mark.heavy
@pytest.mark.timeout(240)
def test_browser_page_drives_the_robot_and_shows_touch(tmp_path):
    with ExitStack() as stack:
        _, robot = stack.enter_context(process(
            [sys.executable, "-m", "sim.node", "task=wipe", "perturb=false", "cameras=true",
             f"addresses.pub={ANY}", f"addresses.cmd={ANY}", f"addresses.tick={ANY}"], tmp_path / "robot.log"))
        _, teleop = stack.enter_context(process(
            [sys.executable, "-m", "teleop.node", f"robot.pub={robot['pub']}", f"robot.cmd={robot['cmd']}",
             f"addresses.operator={ANY}", f"addresses.feedback={ANY}", "web.port=0"], tmp_path / "teleop.log"))
        url = teleop["web"]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=5) as r:
            assert b"slowfast teleop" in r.read()
        profile = tmp_path / "chromium-profile"
        stack.enter_context(process(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-port=0",
             "--remote-allow-origins=*", f"--user-data-dir={profile}", "--window-size=1200,900", url],
            tmp_path / "chromium.log", ready=False))
        dt = DevTools(devtools_url(profile))
        stack.callback(dt.close)

        wait_for(dt, "teleop.connected && teleop.received > 3 && teleop.arms === 1")
        assert dt.eval("teleop.mode") == "fallback" and dt.eval("teleop.xr.supported") is False
        start = np.array(feedback(dt)["tcp_pos"][0])
        wait_for(dt, "teleop.images >= 2")  # camera frames arrive and are drawn

        hand_x = dt.eval("teleop.hands[0].pos[0]")
        dt.hold_until("w", f"teleop.hands[0].pos[0] >= {hand_x + 0.06}")  # clutch not held: the robot must not move
        time.sleep(0.3)
        assert np.linalg.norm(np.array(feedback(dt)["tcp_pos"][0]) - start) < 0.005
        dt.hold("c", 0.05)  # latch the clutch
        wait_for(dt, "teleop.feedback.engaged[0] === true")
        hand_x = dt.eval("teleop.hands[0].pos[0]")
        dt.hold_until("w", f"teleop.hands[0].pos[0] >= {hand_x + 0.06}")  # 6 cm forward
        wait_for(dt, f"teleop.feedback.tcp_pos[0][0] > {start[0] + 0.03}")
        for _ in range(20):  # then down onto the surface, 12 mm at a time, until the wrist feels it
            if np.linalg.norm(feedback(dt)["wrench"][0][:3]) > 3.0:
                break
            hand_z = dt.eval("teleop.hands[0].pos[2]")
            dt.hold_until("f", f"teleop.hands[0].pos[2] <= {hand_z - 0.012}")
            # The robot follows at <= 0.25 m/s: give it 0.15 s of simulated time (a loaded machine runs it slower).
            sim_time = dt.eval("teleop.feedback.sim_time")
            wait_for(dt, f"teleop.feedback.sim_time >= {sim_time + 0.15}")
        fb = feedback(dt)
        assert np.linalg.norm(fb["wrench"][0][:3]) > 3.0, fb["wrench"]
        # Then press 6 mm further (~7 N more through the impedance), so the touch the page draws below does not
        # depend on where in the last 12 mm step the surface happened to be.
        hand_z = dt.eval("teleop.hands[0].pos[2]")
        dt.hold_until("f", f"teleop.hands[0].pos[2] <= {hand_z - 0.006}")
        sim_time = dt.eval("teleop.feedback.sim_time")
        wait_for(dt, f"teleop.feedback.sim_time >= {sim_time + 0.15}")
        wait_for(dt, "teleop.drawn.markerArrows > 5 && teleop.drawn.forceArrows >= 1")
        state = json.loads(dt.eval("JSON.stringify({sent: teleop.sent, errors: teleop.errors, drawn: teleop.drawn})"))
        assert state["sent"] > 20 and state["errors"] == []

        png = base64.b64decode(dt.call("Page.captureScreenshot", format="png")["data"])
        (tmp_path / "page.png").write_bytes(png)
        img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)  # BGR
        rect = json.loads(dt.eval("JSON.stringify(document.getElementById('tactile').getBoundingClientRect())"))
        tactile = img[int(rect["top"]):int(rect["bottom"]), int(rect["left"]):int(rect["right"])]
        marker_px = np.all(np.abs(tactile.astype(int) - [247, 195, 79]) < 40, axis=2).sum()  # #4fc3f7 arrows
        force_px = np.all(np.abs(img.astype(int) - [67, 112, 255]) < 40, axis=2).sum()  # #ff7043 force arrows
        cam = json.loads(dt.eval("JSON.stringify(document.getElementById('cam0').getBoundingClientRect())"))
        camera = img[int(cam["top"]) + 2:int(cam["bottom"]) - 2, int(cam["left"]) + 2:int(cam["right"]) - 2]
        assert marker_px > 30, f"no marker arrows in the screenshot ({marker_px} px)"
        assert force_px > 20, f"no force arrow in the screenshot ({force_px} px)"
        assert camera.std() > 5, "the camera view is blank"
