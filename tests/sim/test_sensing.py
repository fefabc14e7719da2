import numpy as np

import sim
from sim.experts import make_expert


def _traverse(task: str, seed: int, steps: int = 60):
    env = sim.make_env(task, perturb=False)
    obs, _ = env.reset(seed=seed)
    pol = make_expert(task)
    pol.reset(env)
    while pol.phase != "traverse":
        obs, *_ = env.step(pol.act(obs))
    for _ in range(15):  # let sliding settle
        obs, *_ = env.step(pol.act(obs))
    records = []
    prev = obs["tcp_pos"][0].copy()
    for _ in range(steps):
        obs, *_ = env.step(pol.act(obs))
        vel = (obs["tcp_pos"][0] - prev) * env.control_hz
        prev = obs["tcp_pos"][0].copy()
        rot = env.tcp_pose(0)[1]
        pad = env.pad_names.index("arm/tool")
        mean_offset = obs["marker_offset"][pad].reshape(-1, 2).mean(axis=0)
        n = rot[:, 2]
        depth = obs["marker_depth"][pad].max()
        records.append((vel - (vel @ n) * n, rot[:, :2] @ mean_offset, rot @ obs["wrench"][0][:3], n, depth))
    return env, records


def test_sliding_tool_feels_friction_against_its_motion():
    """Markers and wrench shear point against the sliding direction, as friction on a real pad does."""
    env, records = _traverse("wipe", seed=2)
    cos_markers, cos_wrench = [], []
    in_contact = [depth > 0 for *_, depth in records]
    assert np.mean(in_contact) > 0.9
    for v, off_world, f_world, n, depth in records:
        if np.linalg.norm(v) < 0.01 or depth <= 0:
            continue
        shear = f_world - (f_world @ n) * n
        cos_markers.append(off_world @ v / (np.linalg.norm(off_world) * np.linalg.norm(v) + 1e-12))
        cos_wrench.append(shear @ v / (np.linalg.norm(shear) * np.linalg.norm(v) + 1e-12))
    assert len(cos_markers) > 20
    assert np.median(cos_markers) < -0.7, np.median(cos_markers)
    assert np.median(cos_wrench) < -0.7, np.median(cos_wrench)


def test_wrench_reads_the_press_while_peeling():
    env, records = _traverse("peel", seed=1, steps=30)
    sensed = [np.linalg.norm(f) for _, _, f, _, _ in records]
    assert np.mean(sensed) > 3.0  # in contact, pressing


def test_slip_reads_zero_while_sticking_and_nonzero_while_sliding():
    env = sim.make_env("lift", perturb=False)
    obs, _ = env.reset(seed=0)
    pol = make_expert("lift")
    pol.reset(env)
    for _ in range(int(3.0 * env.control_hz)):  # squeezed and lifting: the box sticks
        obs, *_ = env.step(pol.act(obs))
    sticking = np.abs(obs["marker_slip"]).max()
    assert np.abs(obs["marker_offset"]).max() > 0
    env.model.geom_friction[env.task._box_geom][0] = 0.02  # make it slide
    slid = 0.0
    for _ in range(10):
        obs, *_ = env.step(pol.act(obs))
        slid = max(slid, float(np.abs(obs["marker_slip"]).max()))
    assert sticking < 0.005 < slid
