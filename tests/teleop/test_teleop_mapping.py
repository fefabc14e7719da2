"""Clutch, relative mapping, lost-sync guard and operator-message validation of the teleop node (no processes)."""

from __future__ import annotations

import numpy as np
import pytest

from bus.message import Message
from spatial.rotations import mat_to_rotvec, matrix_to_quat, quat_to_mat, rotvec_to_mat
from teleop.node import FRAMES, ArmTeleop, MappingConfig, OperatorRejected, parse_operator
from teleop.operators import KeyboardHand, hand_for_target

START_POS = np.array([0.45, -0.05, 0.14])
START_ROT = rotvec_to_mat(np.array([2.0, -2.0, 0.3]))
IDENTITY = np.array([1.0, 0.0, 0.0, 0.0])


def hand(pos, quat=IDENTITY) -> np.ndarray:
    return np.concatenate((np.asarray(pos, float), quat))


def engaged_arm(cfg: MappingConfig | None = None, home=(0.0, 0.0, 0.0)) -> ArmTeleop:
    arm = ArmTeleop(cfg or MappingConfig())
    arm.reset(START_POS, START_ROT, 0.04)
    assert arm.update(hand(home), 1.0, False, FRAMES["robot"]) is None  # release first: the reset wants a fresh press
    assert arm.update(hand(home), 1.0, True, FRAMES["robot"]).kind == "engage"
    return arm


def test_held_clutch_after_reset_must_be_pressed_again():
    arm = ArmTeleop(MappingConfig())
    arm.reset(START_POS, START_ROT, 0.04)
    assert arm.update(hand([0.1, 0, 0]), 1.0, True, FRAMES["robot"]) is None
    assert not arm.engaged
    np.testing.assert_array_equal(arm.target_pos, START_POS)


def test_clutch_maps_relative_motion_and_freezes_on_release():
    arm = engaged_arm(MappingConfig(pos_scale=2.0))
    arm.update(hand([0.01, 0.0, 0.0]), 1.0, True, FRAMES["robot"])
    np.testing.assert_allclose(arm.target_pos, START_POS + [0.02, 0, 0])
    assert arm.update(hand([0.01, 0.0, 0.0]), 1.0, False, FRAMES["robot"]).kind == "release"
    arm.update(hand([0.5, 0.5, 0.5]), 1.0, False, FRAMES["robot"])  # repositioning the hand moves nothing
    np.testing.assert_allclose(arm.target_pos, START_POS + [0.02, 0, 0])
    # Re-clutch far away: the new anchor is the held target, so there is no jump.
    assert arm.update(hand([0.5, 0.5, 0.5]), 1.0, True, FRAMES["robot"]).kind == "engage"
    arm.update(hand([0.5, 0.5, 0.49]), 1.0, True, FRAMES["robot"])
    np.testing.assert_allclose(arm.target_pos, START_POS + [0.02, 0, -0.02])


def test_xr_frame_maps_forward_to_robot_x_and_up_to_z():
    arm = engaged_arm()
    arm.update(hand([0.0, 0.01, -0.02]), 1.0, True, FRAMES["xr"])  # up 1 cm, forward 2 cm in WebXR axes
    np.testing.assert_allclose(arm.target_pos, START_POS + [0.02, 0, 0.01], atol=1e-12)


def test_rotation_is_applied_in_world_frame_and_can_be_locked():
    q = matrix_to_quat(rotvec_to_mat(np.array([0.0, 0.0, 0.2])))
    arm = engaged_arm()
    arm.update(hand([0, 0, 0], q), 1.0, True, FRAMES["robot"])
    np.testing.assert_allclose(arm.target_rot, rotvec_to_mat(np.array([0, 0, 0.2])) @ START_ROT, atol=1e-9)
    locked = engaged_arm(MappingConfig(rotation="locked"))
    locked.update(hand([0, 0, 0], q), 1.0, True, FRAMES["robot"])
    np.testing.assert_allclose(locked.target_rot, START_ROT)


def test_gripper_follows_grip_only_while_engaged():
    arm = ArmTeleop(MappingConfig())
    arm.reset(START_POS, START_ROT, 0.04)
    arm.update(hand([0, 0, 0]), 0.0, False, FRAMES["robot"])
    assert arm.width == 0.04  # an open trigger before the clutch does not drop the tool
    arm.update(hand([0, 0, 0]), 0.0, True, FRAMES["robot"])
    arm.update(hand([0, 0, 0]), 0.25, True, FRAMES["robot"])
    assert arm.width == pytest.approx(0.06)


def test_lost_sync_guard_refuses_jumps_and_needs_a_new_press():
    arm = engaged_arm(MappingConfig(max_jump_m=0.05, max_jump_rad=0.5))
    arm.update(hand([0.02, 0, 0]), 1.0, True, FRAMES["robot"])
    held = arm.target_pos.copy()
    event = arm.update(hand([0.2, 0, 0]), 1.0, True, FRAMES["robot"])  # tracking glitch: 18 cm in one sample
    assert event.kind == "lost_sync" and event.jump_m == pytest.approx(0.18)
    assert not arm.engaged and arm.lost_sync == 1
    np.testing.assert_array_equal(arm.target_pos, held)
    assert arm.update(hand([0.02, 0, 0]), 1.0, True, FRAMES["robot"]) is None  # still held: no silent resume
    np.testing.assert_array_equal(arm.target_pos, held)
    arm.update(hand([0.2, 0, 0]), 1.0, False, FRAMES["robot"])
    assert arm.update(hand([0.2, 0, 0]), 1.0, True, FRAMES["robot"]).kind == "engage"
    np.testing.assert_array_equal(arm.target_pos, held)
    rot = engaged_arm(MappingConfig(max_jump_rad=0.5))
    q = matrix_to_quat(rotvec_to_mat(np.array([0.8, 0.0, 0.0])))
    assert rot.update(hand([0, 0, 0], q), 1.0, True, FRAMES["robot"]).kind == "lost_sync"


@pytest.mark.parametrize("rotation,rot_scale,pos_scale", [("relative", 1.0, 1.0), ("relative", 0.5, 2.0)])
def test_scripted_operator_inverts_the_mapping(rotation, rot_scale, pos_scale):
    cfg = MappingConfig(pos_scale=pos_scale, rot_scale=rot_scale, rotation=rotation)
    arm = engaged_arm(cfg, home=(0.1, -0.2, 0.3))
    target = np.concatenate((START_POS + [0.01, -0.02, 0.015], mat_to_rotvec(rotvec_to_mat([0, 0.1, 0.05]) @ START_ROT),
                             [0.0]))
    mapping = {"pos_scale": pos_scale, "rot_scale": rot_scale, "rotation": rotation}
    pose = hand_for_target(target, arm.anchor_command(), arm.anchor_hand(), mapping)
    arm.update(pose, 1.0, True, FRAMES["robot"])
    np.testing.assert_allclose(arm.command()[:3], target[:3], atol=1e-9)
    np.testing.assert_allclose(arm.target_rot, rotvec_to_mat(target[3:6]), atol=1e-9)


def _msg(**arrays) -> Message:
    return Message("operator", 0.0, 0, arrays, {"frame": "robot"})


def test_operator_messages_are_validated():
    good = {"pose": np.zeros((2, 7)) + [0, 0, 0, 1, 0, 0, 0], "grip": np.ones(2), "clutch": np.ones(2, np.uint8)}
    sample = parse_operator(_msg(**good), 2)
    assert sample.clutch.tolist() == [True, True]
    with pytest.raises(OperatorRejected) as exc:
        parse_operator(_msg(**good), 1)
    assert exc.value.kind == "shape"
    bad = dict(good, pose=np.full((2, 7), np.nan))
    with pytest.raises(OperatorRejected, match="nonfinite"):
        parse_operator(_msg(**bad), 2)
    with pytest.raises(OperatorRejected, match="quaternion"):
        parse_operator(_msg(**dict(good, pose=np.zeros((2, 7)))), 2)
    with pytest.raises(OperatorRejected, match="schema"):
        parse_operator(_msg(pose=good["pose"]), 2)
    msg = _msg(**good)
    msg.meta["frame"] = "vr"
    with pytest.raises(OperatorRejected, match="frame"):
        parse_operator(msg, 2)


def test_keyboard_hand_keys():
    kb = KeyboardHand(2, step_m=0.01, step_rad=0.1)
    kb.press("w")
    kb.press("r")
    kb.press(" ")
    assert kb.pose[0, :3].tolist() == [0.01, 0.0, 0.01] and kb.clutch.tolist() == [True, False]
    kb.press("j")
    np.testing.assert_allclose(quat_to_mat(kb.pose[0, 3:]), rotvec_to_mat(np.array([0, 0, 0.1])), atol=1e-12)
    kb.press("\t")
    kb.press("g")
    assert kb.arm == 1 and kb.grip.tolist() == [1.0, 0.0]
    assert kb.press("x") == "reset" and kb.press("q") == "quit"
