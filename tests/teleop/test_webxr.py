"""The operator page's WebXR immersive-ar mode, run: headless Chromium with an emulated Meta Quest 3 (the iwer
WebXR runtime, a test-only npm package that ``make test`` installs into tests/teleop/webxr; DevTools injects its
browser bundle before the page's script runs, the product never loads it). The page enters AR from its button
(a real click), the right controller's squeeze (clutch) and pose drive the robot through the real teleop and robot
nodes, and while the robot presses the surface the XR frames draw the wrist force and touch arrows (the page's own
record of what its WebGL calls drew, and the pixels of the XR layer). Needs Debian's ``chromium`` and npm."""

from __future__ import annotations

import base64
import json
import math
from contextlib import ExitStack
from typing import Any

import cv2
import numpy as np
import pytest
from browser_helpers import (
    CHROMIUM,
    IWER_BUNDLE,
    NO_CHROMIUM,
    NO_IWER,
    DevTools,
    chromium_args,
    devtools_url,
    process,
    robot_and_teleop,
    wait_for,
)

from spatial.rotations import mat_to_rotvec, quat_to_mat

pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM),
              pytest.mark.skipif(not IWER_BUNDLE.is_file(), reason=NO_IWER)]

# Run before the page's script: an emulated headset that offers immersive-ar, installed over Chromium's own
# navigator.xr (which has no AR device), and the test's handles on its right controller. iwer applies button values
# and poses at the start of its next frame.
HEADSET = """
(() => {
  const device = new IWER.XRDevice(IWER.metaQuest3, { stereoEnabled: true });  // two views, as in a headset
  device.installRuntime({ forceInstall: true });
  const hand = device.controllers.right;
  window.xrTest = {
    device, hand,
    squeeze(value) { hand.updateButtonValue("squeeze", value); },
    move(axis, delta) { hand.position[axis] += delta; },
    yaw(angle) {  // turn the controller about the XR up axis (y): q <- (cos a/2, 0, sin a/2, 0) * q
      const c = Math.cos(angle / 2), s = Math.sin(angle / 2), q = hand.quaternion;
      const [x, y, z, w] = [q.x, q.y, q.z, q.w];
      q.set(c * x + s * z, c * y + s * w, c * z - s * x, c * w - s * y);
    },
  };
})();
"""
FORCE_BGR = np.array([67, 112, 255])  # the XR force arrow's colour, #ff7043


def page(dt: DevTools, expression: str) -> Any:
    return json.loads(dt.eval(f"JSON.stringify({expression})"))


def move_hand(dt: DevTools, axis: str, delta: float, step: float = 0.01) -> None:
    """Move the controller by ``delta`` m along an XR axis in steps of at most ``step``, each one read by an XR
    frame (the hand pose the page sends) before the next: the lost-sync guard refuses a 5 cm jump in one sample."""
    i = "xyz".index(axis)
    start, n = dt.eval(f"teleop.hands[0].pos[{i}]"), max(1, math.ceil(abs(delta) / step))
    for k in range(1, n + 1):
        dt.eval(f"xrTest.move('{axis}', {delta / n})")
        wait_for(dt, f"Math.abs(teleop.hands[0].pos[{i}] - {start + delta * k / n}) < 1e-4", timeout=10)


def settle(dt: DevTools, sim_seconds: float = 0.15) -> None:
    """Give the robot ``sim_seconds`` of its time to follow (a loaded machine runs it slower than the clock)."""
    sim_time = dt.eval("teleop.feedback.sim_time")
    wait_for(dt, f"teleop.feedback.sim_time >= {sim_time + sim_seconds}")


def tcp_turn_since(dt: DevTools, rot0: np.ndarray) -> np.ndarray:
    """The TCP's rotation since ``rot0`` as a world-frame rotation vector."""
    return mat_to_rotvec(quat_to_mat(np.array(page(dt, "teleop.feedback.tcp_quat[0]"))) @ rot0.T)


@pytest.mark.timeout(120)
def test_ar_controller_drives_the_robot_and_draws_touch(tmp_path):
    with ExitStack() as stack:
        teleop = stack.enter_context(robot_and_teleop(tmp_path, "task=wipe", "perturb=false", "cameras=false"))
        profile = tmp_path / "chromium-profile"
        # WebGL on the CPU (SwiftShader): Chromium's automatic fallback to it is deprecated, so ask for it.
        stack.enter_context(process(chromium_args(profile, "about:blank", ["--enable-unsafe-swiftshader"]),
                                    tmp_path / "chromium.log", ready=False))
        dt = DevTools(devtools_url(profile))
        stack.callback(dt.close)
        dt.open_with_script(teleop["web"], IWER_BUNDLE.read_text() + HEADSET)

        wait_for(dt, "teleop.connected && teleop.received > 3 && teleop.arms === 1 && teleop.xr.supported")
        assert dt.eval("document.getElementById('xr-button').hidden") is False
        dt.click("#xr-button")
        wait_for(dt, "teleop.xr.active && teleop.mode === 'xr' && teleop.xr.frames > 5")
        assert dt.eval("document.getElementById('xr-button').textContent") == "Exit AR"
        fb = page(dt, "teleop.feedback")
        start, rot0 = np.array(fb["tcp_pos"][0]), quat_to_mat(np.array(fb["tcp_quat"][0]))
        assert fb["engaged"] == [False]

        # Clutch released: the controller moves 4 cm toward the robot's +x, the robot does not.
        move_hand(dt, "z", -0.04)
        settle(dt, 0.3)
        assert np.linalg.norm(np.array(page(dt, "teleop.feedback.tcp_pos[0]")) - start) < 0.005

        # Squeeze: the clutch engages where the hand is; 6 cm along XR -z is 6 cm along the robot's +x.
        dt.eval("xrTest.squeeze(1)")
        wait_for(dt, "teleop.feedback.engaged[0] === true && teleop.hands[0].clutch")
        move_hand(dt, "z", -0.06)
        wait_for(dt, f"teleop.feedback.tcp_pos[0][0] > {start[0] + 0.05}")
        moved = np.array(page(dt, "teleop.feedback.tcp_pos[0]")) - start
        assert abs(moved[1]) < 0.01 and abs(moved[2]) < 0.01, moved

        # Turning the controller 0.3 rad about XR up turns the tool 0.3 rad about the world's z (the quaternion's
        # order and the frame map, end to end).
        for _ in range(3):  # 0.1 rad per XR frame at most: the lost-sync guard refuses 0.5 rad in one sample
            quat = dt.eval("teleop.hands[0].quat.join()")
            dt.eval("xrTest.yaw(0.1)")
            wait_for(dt, f"teleop.hands[0].quat.join() !== '{quat}'", timeout=10)
        for _ in range(100):
            turned = tcp_turn_since(dt, rot0)
            if turned[2] > 0.27:
                break
            settle(dt, 0.05)
        assert abs(turned[2] - 0.3) < 0.05 and np.hypot(*turned[:2]) < 0.05, turned

        # Down (XR -y) onto the surface, 12 mm at a time, until the wrist feels it; then 6 mm further.
        for _ in range(20):
            if np.linalg.norm(page(dt, "teleop.feedback.wrench[0]")[:3]) > 3.0:
                break
            move_hand(dt, "y", -0.012)
            settle(dt)
        move_hand(dt, "y", -0.006)
        settle(dt)
        wrench = page(dt, "teleop.feedback.wrench[0]")
        assert np.linalg.norm(wrench[:3]) > 3.0, wrench

        # The XR frames draw it: the force arrow from the controller, 1 cm per N, pointing up in the XR frame (the
        # surface pushes the tool up; XR's up is y), and the pad's marker arrows.
        frame0 = dt.eval("teleop.xr.frames")
        drawn = wait_for(dt, f"teleop.xr.drawn.frame > {frame0} && teleop.xr.drawn.force.length === 1 && "
                             "teleop.xr.drawn.force[0].newtons > 3 && teleop.xr.drawn.markerArrows > 5 && "
                             "JSON.stringify(teleop.xr.drawn)")
        drawn = json.loads(drawn)
        arrow = drawn["force"][0]
        assert drawn["views"] == 2, drawn  # both eyes
        assert arrow["arm"] == 0 and arrow["length_m"] == pytest.approx(0.01 * arrow["newtons"], rel=1e-3), arrow
        direction = (np.array(arrow["to"]) - arrow["from"]) / arrow["length_m"]
        assert direction[1] > 0.8, f"the force arrow does not point up in the XR frame: {direction}"
        assert np.allclose(arrow["from"], page(dt, "teleop.hands[0].pos"), atol=0.002), (arrow, "not at the hand")

        # And its pixels: the XR layer's canvas (hidden on the page; the emulator shows it over the page) with the
        # 2-D views out of the way holds the force arrow's colour.
        dt.eval("document.getElementById('xr-canvas').hidden = false; "
                "for (const el of document.querySelectorAll('header, main')) el.style.visibility = 'hidden'")
        wait_for(dt, f"teleop.xr.frames > {dt.eval('teleop.xr.frames') + 3}")
        png = base64.b64decode(dt.call("Page.captureScreenshot", format="png")["data"])
        (tmp_path / "xr.png").write_bytes(png)
        img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        force = np.all(np.abs(img.astype(int) - FORCE_BGR) < 40, axis=2)
        eyes = force[:, :force.shape[1] // 2].sum(), force[:, force.shape[1] // 2:].sum()  # left, right view
        assert min(eyes) > 20, f"no force arrow in an eye's view ({eyes} px); see {tmp_path / 'xr.png'}"

        # Releasing the squeeze lets go: the controller moves back up, the robot stays pressed where it is.
        dt.eval("xrTest.squeeze(0)")
        wait_for(dt, "teleop.feedback.engaged[0] === false")
        held = np.array(page(dt, "teleop.feedback.tcp_pos[0]"))
        move_hand(dt, "y", 0.04)
        settle(dt, 0.3)
        assert np.linalg.norm(np.array(page(dt, "teleop.feedback.tcp_pos[0]")) - held) < 0.005

        # Exit AR from the same button (a dom-overlay shows it; the emulator's full-page layer covers it, so a script
        # click): the page is back in its keyboard mode, with nothing gone wrong on the way.
        dt.eval("document.getElementById('xr-button').click()")
        wait_for(dt, "!teleop.xr.active && teleop.mode === 'fallback'")
        state = page(dt, "{errors: teleop.errors, xrError: teleop.xr.error, lostSync: teleop.feedback.lost_sync}")
        assert state == {"errors": [], "xrError": None, "lostSync": [0]}, state
