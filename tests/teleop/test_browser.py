"""The browser operator page in a real headless Chromium, driven over the Chrome DevTools protocol: it loads,
connects, its key presses move the robot through the clutch, and it renders touch feedback (page state and a
screenshot); and a page of another origin cannot drive the robot through it, token or not. Needs Debian's
``chromium`` (``make`` installs it when run as root)."""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
import urllib.request
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
from browser_helpers import (
    CHROMIUM,
    NO_CHROMIUM,
    DevTools,
    chromium_args,
    devtools_url,
    operator_server,
    process,
    wait_for,
)

ANY = "tcp://127.0.0.1:*"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)

# A page script that opens a WebSocket to ``url`` and, if it opens, sends clutch-held poses and a reset, the way
# a hostile page would; resolves to "open" or "refused <close code>". The same code runs from a hostile origin
# (refused) and from the operator page's own origin (opens), so the refusal is the origin's doing.
ATTEMPT_JS = """(url) => new Promise((resolve) => {
  const ws = new WebSocket(url);
  let outcome = null;
  ws.onopen = () => {
    outcome = "open";
    const pose = {type: "pose", frame: "robot",
                  arms: [{pos: [0.5, 0.0, 0.3], quat: [1, 0, 0, 0], grip: 1, clutch: true}]};
    const timer = setInterval(() => ws.send(JSON.stringify(pose)), 20);
    ws.send(JSON.stringify({type: "reset"}));
    setTimeout(() => { clearInterval(timer); ws.close(); }, 500);
  };
  ws.onclose = (ev) => resolve(outcome || `refused ${ev.code}`);
})"""


def feedback(dt: DevTools) -> dict:
    return json.loads(dt.eval("JSON.stringify(teleop.feedback)"))


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
        url = teleop["web"]  # the page with this run's token, which its WebSocket must present
        parts = urlsplit(url)
        assert parts.scheme == "http" and parts.hostname == "127.0.0.1" and parts.path == "/", url
        assert parts.query.startswith("token=") and len(parts.query) > 40, url
        with urllib.request.urlopen(url, timeout=5) as r:
            assert b"slowfast teleop" in r.read()
        profile = tmp_path / "chromium-profile"
        stack.enter_context(process(chromium_args(profile, url), tmp_path / "chromium.log", ready=False))
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
        wrench = []  # then down onto the surface, 12 mm at a time, until the wrist feels it
        for _ in range(20):
            wrench.append(feedback(dt)["wrench"][0])
            if np.linalg.norm(wrench[-1][:3]) > 3.0:
                break
            hand_z = dt.eval("teleop.hands[0].pos[2]")
            dt.hold_until("f", f"teleop.hands[0].pos[2] <= {hand_z - 0.012}")
            # The robot follows at <= 0.25 m/s: give it 0.15 s of simulated time (a loaded machine runs it slower).
            sim_time = dt.eval("teleop.feedback.sim_time")
            wait_for(dt, f"teleop.feedback.sim_time >= {sim_time + 0.15}")
        # The reading that ended the descent is the evidence: contact force wobbles around the threshold, so a
        # second read a moment later can fall back under it.
        assert np.linalg.norm(wrench[-1][:3]) > 3.0, f"no contact after {len(wrench)} steps down: {wrench[-3:]}"
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


class _AttackerPage(BaseHTTPRequestHandler):
    """Serves ``page`` at every path: the hostile site, on its own port and so its own origin."""

    page = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.timeout(120)
def test_a_page_of_another_origin_cannot_drive_the_robot(tmp_path):
    """A page served from another local port (another origin) opens WebSockets to the operator server with the
    right token (as if it had learnt it) and without: Chromium sends its true Origin and both are refused before
    any message. The server runs in this process, publishing to the inproc socket the node turns into robot
    commands; nothing reaches it. The same script from the operator page's own origin gets through, so the
    refusal is the Origin check's doing and not a test that could never see a connection."""
    with ExitStack() as stack:
        server, sub = stack.enter_context(operator_server())
        port = urlsplit(server.url).port
        target = f"ws://127.0.0.1:{port}/ws"
        attack = (f"const attempt = {ATTEMPT_JS};\n(async () => {{ const results = {{}};\n"
                  f"  results.with_token = await attempt({json.dumps(f'{target}?token={server.token}')});\n"
                  f"  results.without_token = await attempt({json.dumps(target)});\n"
                  "  document.title = 'done ' + JSON.stringify(results); })();")
        handler = type("Attacker", (_AttackerPage,), {"page": f"<!doctype html><title>attacking</title>"
                                                              f"<script>{attack}</script>".encode()})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        stack.callback(httpd.server_close)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        stack.callback(httpd.shutdown)
        attacker_url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        assert urlsplit(attacker_url).port != port

        profile = tmp_path / "chromium-profile"
        stack.enter_context(process(chromium_args(profile, attacker_url), tmp_path / "chromium.log", ready=False))
        dt = DevTools(devtools_url(profile))
        stack.callback(dt.close)

        title = wait_for(dt, "document.title.startsWith('done ') && document.title")
        results = json.loads(title.removeprefix("done "))
        assert results == {"with_token": "refused 1006", "without_token": "refused 1006"}, results
        assert dict(server.rejects) == {"bad_origin": 2}
        assert server.received == 0 and server.clients == 0
        assert sub.recv(timeout=0.5) is None, "a hostile page's message reached the operator socket"

        # Control: the operator page itself (its origin, its token) connects, and the same script from there
        # opens and its poses arrive; without the token it is refused there too.
        dt.call("Page.navigate", url=server.url)
        wait_for(dt, "teleop.connected")
        assert dt.eval(f"({ATTEMPT_JS})({json.dumps(f'{target}?token={server.token}')})") == "open"
        topics = set()
        deadline = time.monotonic() + 10
        while "operator" not in topics and time.monotonic() < deadline:
            msg = sub.recv(timeout=0.5)
            topics |= {msg.topic} if msg is not None else set()
        assert "operator" in topics, "the operator page's own poses did not arrive: the check above proves nothing"
        assert dt.eval(f"({ATTEMPT_JS})({json.dumps(target)})") == "refused 1006"
        assert dict(server.rejects) == {"bad_origin": 2, "no_token": 1}

        # The page opened without its token does not try, and says which address to open.
        dt.call("Page.navigate", url=f"http://127.0.0.1:{port}/")
        wait_for(dt, "document.getElementById('conn').textContent.startsWith('no token')")
        assert dict(server.rejects) == {"bad_origin": 2, "no_token": 1}
